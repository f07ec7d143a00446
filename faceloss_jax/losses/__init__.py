"""The losses of deep face recognition, as pure JAX functions.

Angular family (per-example losses of shape (B,)), Euclidean family, geometry
metrics, the λ schedule of L-Softmax/SphereFace and the successors of ArcFace.
"""

# Euclidean family (euclidean.py)

# Angular family (angular.py)

# Geometry, schedules (geometry.py, schedules.py)
