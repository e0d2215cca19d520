"""`make demo` keeps working: the demo runs end to end and reports what it promises."""

import importlib.util
import re
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


def test_demo_round_trips_and_trains_glori(capsys):
    spec = importlib.util.spec_from_file_location("cxrfm_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    demo.main(["--num-images", "48", "--image-size", "32"])
    out = capsys.readouterr().out
    assert "reloaded embeddings equal the originals: max |diff| = 0.00e+00" in out
    assert "modeling_chexfound.py" in out and "image_processing_cxr.py" in out  # remote code saved beside weights
    auroc = float(re.search(r"test macro AUROC (\d\.\d+)", out).group(1))
    assert auroc > 0.6, out  # a random tiny backbone + GLoRI on phantoms: clearly above chance
    assert out.rstrip().endswith("done")
