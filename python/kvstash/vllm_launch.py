# SPDX-License-Identifier: Apache-2.0
"""Runs vLLM's OpenAI-compatible server with the kvstash connector: the equivalent of the seed
deployment's vllm_start_with_inject.py, without monkey-patching or editing vLLM's files.

    python -m kvstash.vllm_launch Qwen/Qwen3-0.6B --port 8001 --kvstash-master 127.0.0.1:50051

It adds --kv-transfer-config (KvstashConnector from kvstash.vllm_connector, kv_role kv_both)
unless the arguments already have one, then starts vLLM through its own CLI entry point
(`vllm serve ...`). Every vLLM process imports the connector through kv_connector_module_path;
the package also declares a vLLM plugin entry point (vllm.general_plugins) that registers the
names KvstashConnector and DistributedKVConnector.

Launcher options (removed before vLLM sees the arguments):
  --kvstash-master HOST:PORT   store master          (else KVSTASH_MASTER, config file)
  --kvstash-metadata URL       metadata for discovery (else KVSTASH_METADATA)
  --kvstash-config FILE        connector config file (JSON; see docs/python.md)
  --kvstash-connector NAME     connector class name (default KvstashConnector)
"""
import json
import sys

_OPTS = {
    "--kvstash-master": "master",
    "--kvstash-metadata": "metadata",
    "--kvstash-config": "config_file",
    "--kvstash-connector": None,
}


class UsageError(ValueError):
    pass


def build_argv(args):
    """The `vllm` CLI arguments for args (a list, optionally starting with "serve"): "serve",
    then args without the launcher's options, plus --kv-transfer-config when absent. Pure: no
    environment, no vLLM import. Raises UsageError for a launcher option without a value."""
    args = list(args)
    if args and args[0] == "serve":
        args = args[1:]
    extra = {}
    connector = "KvstashConnector"
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, val = a.partition("=")
        if name in _OPTS:
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("--"):
                    raise UsageError("%s needs a value" % name)
                val = args[i + 1]
                i += 1
            if _OPTS[name] is None:
                connector = val
            else:
                extra[_OPTS[name]] = val
        else:
            out.append(a)
        i += 1
    has = any(a == "--kv-transfer-config" or a.startswith("--kv-transfer-config=")
              for a in out)
    if not has:
        ktc = {"kv_connector": connector, "kv_connector_module_path": "kvstash.vllm_connector",
               "kv_role": "kv_both", "kv_connector_extra_config": extra}
        out += ["--kv-transfer-config", json.dumps(ktc, separators=(",", ":"))]
    elif extra:
        raise UsageError("--kvstash-* options conflict with an explicit --kv-transfer-config; "
                         "put them in its kv_connector_extra_config")
    return ["serve"] + out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["-h"], ["--help"]) or not argv:
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        vargs = build_argv(argv)
    except UsageError as e:
        print("kvstash.vllm_launch: %s" % e, file=sys.stderr)
        return 2
    try:
        from vllm.entrypoints.cli.main import main as vllm_main
    except ImportError as e:
        print("kvstash.vllm_launch: vLLM is not importable in this Python (%s): install vLLM "
              "(pip install vllm) or run `vllm %s` yourself" % (e, " ".join(vargs)),
              file=sys.stderr)
        return 2
    from . import vllm_connector
    vllm_connector.register()
    sys.argv = ["vllm"] + vargs
    rc = vllm_main()
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
