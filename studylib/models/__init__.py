"""Pure numpy signal equations and vectorised fitting kernels.

Conventions: the fitted axis (echo time, b-value, frame time, offset) is the *last*
axis of every array; leading axes are voxels of any shape.  No xarray here.
"""
