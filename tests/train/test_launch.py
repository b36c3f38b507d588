def test_rays_worker_pool_warning_is_hidden_but_other_raylet_messages_show(ray_local, capsys):
    import ray._private.worker as ray_worker

    noise = "WARNING: 8 PYTHON worker processes have been started on node: abc with address: 1.2.3.4"
    ray_worker.print_to_stdstream({"lines": [noise, "a real raylet error"], "pid": "raylet", "is_err": False},
                                  ignore_prefix=False)
    printed = capsys.readouterr()
    assert "a real raylet error" in printed.out + printed.err
    assert "worker processes have been started" not in printed.out + printed.err
