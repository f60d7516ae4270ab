"""The second study: relative pose of two views (pairs from the renderer, early or late fusion
networks, photometric or pose loss through a differentiable SE(3) warp).
"""
