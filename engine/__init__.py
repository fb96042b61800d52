"""dreamtalk-live's engine. `engine.open_session` is the live streaming entry point
(`engine.stream`), imported on first use so that `import engine.blendshapes` stays light."""


def __getattr__(name: str):
    if name == "open_session":
        from engine.stream import open_session

        return open_session
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
