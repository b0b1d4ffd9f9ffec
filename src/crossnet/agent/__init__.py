"""`crossnet agent`: `core` (store → lease → peers → programming loop) and `api` (the
agent's local API, JSON over `<state-dir>/agent.sock`). Empty on purpose: importing
the package costs nothing."""
