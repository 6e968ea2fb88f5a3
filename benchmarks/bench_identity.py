"""Identity benchmark: the cost of face identity on a CPU, with the real dlib model.

Prints one JSON object with
- ``load_s``: loading the detector, the 5-point landmarks and the ResNet (once per process);
- ``embed_1024_s``: embedding a 1024x1024 crop at full size (detection + landmarks + ResNet);
- ``embed_crop_s``: embedding a crop as the Dataset step does (at 512 px);
- ``dataset_added_s_per_photo``: what identity adds to the Dataset step per photo: the crops
  are made as ``prepare`` makes them (Haar detector, head-and-shoulders), then the identity step
  itself is timed (:func:`studio.dataset.identity_crop.follow_identity`: each crop embedded once,
  photos that do not match searched whole, plus :func:`studio.dataset.identity.assess`), for
  ``one_person`` (four astronaut photos) and ``mixed`` (plus Grace Hopper and a two-person
  photo, which are also searched whole for the set's face);

each the median of ``--repeats`` runs, in wall-clock seconds and in CPU seconds of this process
(``*_cpu_s``: on a shared machine other processes inflate the wall clock, not the CPU time), with
the load average. Photos come from scikit-image and matplotlib::

    python benchmarks/bench_identity.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _median(fn, repeats: int) -> tuple[float, float]:
    """Median (wall seconds, CPU seconds) of ``repeats`` calls."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def _photos(folder: Path, mixed: bool) -> int:
    import dataset_photos as dp

    folder.mkdir(parents=True, exist_ok=True)
    photos = dict(dp.good_variants())
    if mixed:
        photos.update({"grace_hopper.jpg": dp.grace_hopper(),
                       "two.png": dp.side_by_side(dp.grace_hopper(), dp.astronaut())})
    for name, im in photos.items():
        dp.save(im, folder / name)
    return len(photos)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import dataset_photos as dp
    import numpy as np
    from PIL import Image

    from studio.dataset.crop import crop_face
    from studio.dataset.faces import HaarDetector
    from studio.dataset.identity import PhotoIdentity, assess, embed_crop
    from studio.dataset.identity_crop import follow_identity
    from studio.dataset.ingest import ingest
    from studio.identity import engine as E

    t = time.perf_counter()
    eng = E.DlibEngine()
    load_s = time.perf_counter() - t
    big = dp.astronaut().resize((1400, 1400), Image.Resampling.LANCZOS)
    haar = HaarDetector()
    crop = crop_face(big, haar.detect(np.asarray(big)))
    arr = np.asarray(crop.image)
    assert crop.image.size == (1024, 1024) and len(eng.embed(arr)) >= 1
    result = {"machine": f"{os.cpu_count()} CPU cores",
              "load_average": round(os.getloadavg()[0], 1), "load_s": round(load_s, 3)}
    for key, fn in (("embed_1024", lambda: eng.embed(arr)),
                    ("embed_crop", lambda: embed_crop(eng, crop))):
        wall, cpu = _median(fn, args.repeats)
        result.update({f"{key}_s": round(wall, 3), f"{key}_cpu_s": round(cpu, 3)})
    for label, mixed in (("one_person", False), ("mixed", True)):
        with tempfile.TemporaryDirectory() as tmp:
            n = _photos(Path(tmp) / "in", mixed)
            photos = []
            for img in ingest([Path(tmp) / "in"]).accepted:
                faces = haar.detect(np.asarray(img.image))
                photos.append((img.image, faces, crop_face(img.image, faces)))

        def step(photos=photos):
            followed = follow_identity(eng, photos, "head-and-shoulders")
            assess([PhotoIdentity(str(i), "", f.embedding.vector if f.embedding else None,
                                  f.faces) for i, f in enumerate(followed)])

        wall, cpu = _median(step, args.repeats)
        result[label] = {"photos": n, "dataset_added_s_per_photo": round(wall / n, 3),
                         "dataset_added_cpu_s_per_photo": round(cpu / n, 3)}
    result["load_average_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
