"""smoke: each check declared once (``checks``), the runner and its report (``runner``), its three modes
(``modes``), and reading opencode's reply (``agent_reply``)."""
