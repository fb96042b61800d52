"""Named landmark groups on MediaPipe's 478-point face mesh (468 mesh + 10 iris points).

Contours are ordered along the curve. "Left" and "right" are the subject's: the subject's
right eye is on the image's left in a frontal photo.
"""

from __future__ import annotations

NUM_LANDMARKS = 478

# Lips: each contour runs from the subject's right mouth corner to the left one.
LIP_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIP_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIP_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIP_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNER_RIGHT = 61
MOUTH_CORNER_LEFT = 291

# Eyes: upper and lower lid contours from the outer corner to the inner corner.
RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
IRIS_CENTERS = (468, 473)  # which eye each belongs to is decided by position
IRIS_RINGS = ((469, 470, 471, 472), (474, 475, 476, 477))

# Brows: from the outer end to the inner end.
RIGHT_BROW_UPPER = (70, 63, 105, 66, 107)
RIGHT_BROW_LOWER = (46, 53, 52, 65, 55)
LEFT_BROW_UPPER = (300, 293, 334, 296, 336)
LEFT_BROW_LOWER = (276, 283, 282, 295, 285)

# The face outline, clockwise in the image from the top of the forehead.
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip

NOSE_TIP = 1
FOREHEAD_TOP = 10
CHIN = 152
NOSE_ALA_RIGHT = (98, 64, 129, 49, 48, 219)
NOSE_ALA_LEFT = (327, 294, 358, 279, 278, 439)
