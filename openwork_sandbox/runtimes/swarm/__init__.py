"""The swarm runtime: a Docker Swarm service per sandbox (``runtime.py``), over the pure placement
rule (``placement``), what the manager reports (``cluster``), the service's pieces (``service``) and
one-off jobs on a node (``jobs``) , the log through the manager (``logs``) and one placement at a time from this host (``lock``)."""
