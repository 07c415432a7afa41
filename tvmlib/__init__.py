"""tvmlib: Terminal Velocity Matching and Consistency Mid-Training, one concept per module.

Convention everywhere (TVM's): t = 0 is data, t = 1 is noise, x_t = (1 - t) x0 + t eps,
velocity target v = eps - x0, and one network signature ``F = net(x, t, s, y=None, w=None)``.
"""

__version__ = "0.1.0"
