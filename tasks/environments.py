"""The environment of a run, by `task.env.kind` (tasks/environment.py is the interface):

  single  none: one completion per sample, scored by the task's verifier (the actor's single-turn path)
  tool    tasks/tool_env.py: the policy calls a tool (calculator, or Python in the sandbox)
  http    tasks/http_env.py: a gym-style environment server, over HTTP with deadlines
  custom  your own Environment, built by `task.env.factory` ("module:function"; docs/environments.md)
"""

from __future__ import annotations


def make_environment(config, codec, tool=None):
    """The environment of `task.env` (None for "single": one completion per sample). `codec`: the policy's
    tokenizer (tasks/codec.py); `tool`: the tool to call (kind = "tool"; default `make_tool(config)`)."""
    env = config.task.env
    if env.kind == "single":
        return None
    if env.kind == "custom":
        import importlib

        module, function = env.factory.split(":")
        try:
            build = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"task.env.factory = {env.factory!r}: {type(exc).__name__}: {exc}") from None
        return build(env, codec)
    if env.kind == "http":
        from asyncor.tasks.http_env import HttpEnvironment

        return HttpEnvironment(env, codec)
    from asyncor.tasks.tool_env import ToolEnvironment

    return ToolEnvironment(env, codec, tool if tool is not None else make_tool(config))


def make_tool(config):
    """The tool of `task.env.tool` (tasks/tool_env.py `Tool`)."""
    if config.task.env.tool == "python":
        from asyncor.tasks.python_tool import PythonTool

        return PythonTool.from_config(config)
    from asyncor.tasks.tool_env import CalculatorTool

    return CalculatorTool()
