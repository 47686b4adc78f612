"""Round engines: one module per round mode, found through `registry`.

Built-in modes: ``plain``, ``secure``, ``statistics``, ``bagging`` and ``cyclic``
(`trees`), ``collective``, ``secure-hist``, ``async`` (FedBuff buffers, `async_buffer`),
``async-secure`` (FedBuff buffers whose cohorts aggregate securely, `async_secure`),
``distill`` (securely averaged soft labels of a distillation run, `distill`),
``ensemble-members``, ``ensemble-weights``, ``ensemble-evaluate`` (a FedBoost ensemble run,
`ensemble`);
`builtin` registers them. Layers: routes call
engines (or crud modules); engines call crud modules (`runs`, `rounds`, `contributions`,
`statements`, `model_store`, the protocol mailboxes ...); crud modules call `tables`/`db`.

Writing a plugin mode::

    # acme/echo_engine.py, loaded with FEDSILO_SERVICE_PLUGINS=acme.echo_engine
    from aggregation.service.engines.registry import register

    class EchoEngine:              # the five methods of `base.RoundEngine`
        def start(self, ctx, deadline_s): ...
        def task_for(self, ctx, silo): ...   # an ExtensionTask(mode="echo", body={...})
        def receive(self, ctx, answer): ...  # POST .../rounds/{n}/extension, answer.body
        def advance(self, ctx, *, force): ...
        def close(self, ctx): ...            # e.g. common.close_with_answers + model_store

    register("echo", EchoEngine())

A run uses it with ``RunSpec(mode="echo", ...)``; silos need a handler of the same name.
`tests/aggregation/engines/echo_plugin.py` is a complete example.
"""
