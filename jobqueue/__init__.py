"""The Redis job protocol shared by the API and the worker: keys, Lua scripts, states, settings."""
