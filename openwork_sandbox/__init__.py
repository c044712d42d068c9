"""openwork-sandbox: build an OpenWork image, push it, boot it (microVM or container), smoke-test it.

The Invoke collection is ``openwork_sandbox.tasks.ns``; the ``openwork-sandbox`` program
(``openwork_sandbox.cli``, ``__main__``) and this repository's ``tasks.py`` run it. Packages, from the top
(each imports only those below it; ``docs/architecture.md``), and their modules:

- ``smoke``: ``checks``, ``runner``, ``modes``, ``agent_reply``
- ``sandbox`` (beside ``image``): the flows ``up``, ``down``, ``status``, ``logs``, ``reset``, ``doctor``,
  ``backup``, ``restore``, ``leftovers``, ``manifests``; ``doctor_swarm`` (doctor's swarm rows); what they share, ``launch``,
  ``locate``, ``endpoint``, ``start_watch``, ``follow``; the rules ``decision``, ``start_gate``, ``start_slots``,
  ``avx``, ``archive``, ``doctor_check`` (one doctor row), ``kube`` (a sandbox as Kubernetes objects)
- ``image``: ``build``, ``artifacts``, ``digests``, ``multiplatform``, ``foreign_check``, ``oci``, ``push``,
  ``index_push``; the build context ``context/`` (package data)
- ``runtimes``: ``base``, ``choice``, ``probe``, ``docker``, ``docker_copy``, ``docker_platform``, ``docker_faults``, ``docker_engine``, ``listing``; ``microsandbox`` (``runtime``,
  ``sdk``, ``spec``, ``boot``, ``jobs``, ``logs``, ``copy``, ``launch``, ``platform_check``, ``pull``); ``swarm`` (``runtime``,
  ``placement``, ``cluster``, ``service``, ``jobs``, ``logs``, ``lock``)
- ``state`` (beside ``registry``): ``store``, ``persist``, ``pin``, ``secrets``, ``ownership``, ``supervision``, ``tls``
- ``registry``: ``client``, ``transport``, ``access``, ``docker_config``
- ``net``: ``http``, ``openwork_api``, ``health``, ``ports``
- ``config``: ``settings``, ``env_file``, ``rules``, ``specs``, ``images``, ``values``, ``opencode``
- ``core``: ``errors``, ``files``, ``versions``, ``platforms``, ``processes``, ``console``, ``gha``,
  ``report``, ``boundary``, ``interrupts``
"""

__version__ = "0.1.0"  # the one place the version is written (pyproject.toml reads it from here)
