"""The study's fine-tuning methods as train.py flags: study.py trains with them, mechanism.py samples their positions."""
METHOD_FLAGS = {"pose2": ["--method", "pose", "--num-chunks", 2], "pose4": ["--method", "pose", "--num-chunks", 4],
                "noskip": ["--method", "pose", "--num-chunks", 1], "randpos": ["--method", "randpos"],
                "full": ["--method", "full"],
                # full-length with passkey prompts of 128 (Lc) to Lt tokens: does it then keep retrieval at Lc?
                "fullvar": ["--method", "full", "--passkey-min-len", 128]}


def num_chunks(method):
    """PoSE's --num-chunks in a method's flags (None: not PoSE)."""
    flags = METHOD_FLAGS[method]
    return flags[flags.index("--num-chunks") + 1] if "--num-chunks" in flags else None
