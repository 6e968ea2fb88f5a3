"""The face mask of a crop, for the face-weighted loss (``data.mask_weight``).

Preparation knows where the face is in each crop: the detector's box and, with RetinaFace, five
landmarks (eyes, nose, mouth corners), mapped through the crop window. The mask is an ellipse
over the face and the hair around it: from half a face height above the box (hair) to a tenth
below it (chin), 1.4 face widths across, centred on the landmarks when there are any, then
feathered with a Gaussian blur of a tenth of the face width so the loss weight falls off
smoothly. White (255) is the face region, black the rest; the crop's size, mode L.

Crops without a face window (no face found, or the "full" framing that keeps the whole photo)
get no mask: training weighs every pixel of those fully.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from studio.dataset.crop import CropResult

HAIR_ABOVE = 0.5  # of the face height, above the box
CHIN_BELOW = 0.1  # of the face height, below the box
HALF_WIDTH = 0.7  # of the face width, each side of the centre
FEATHER = 0.1  # blur radius, of the face width


def face_mask(crop: CropResult) -> Image.Image | None:
    """The feathered face + hair mask of ``crop`` (its size, mode L), None without a face
    window."""
    win, face = crop.window, crop.face
    if win is None or face is None:
        return None
    out = crop.image.width
    x0, y0, x1, y1 = face.box
    pts = np.array([win.to_crop(p, out) for p in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))])
    left, right = float(pts[:, 0].min()), float(pts[:, 0].max())
    top, bottom = float(pts[:, 1].min()), float(pts[:, 1].max())
    fw, fh = float(right - left), float(bottom - top)
    cx = float(left + right) / 2
    if face.landmarks is not None and len(face.landmarks) == 5:
        cx = float(np.mean([win.to_crop(p, out)[0] for p in np.asarray(face.landmarks)]))
    mask = Image.new("L", crop.image.size, 0)
    ImageDraw.Draw(mask).ellipse((cx - HALF_WIDTH * fw, top - HAIR_ABOVE * fh,
                                  cx + HALF_WIDTH * fw, bottom + CHIN_BELOW * fh), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(max(1.0, FEATHER * fw)))
