"""The tutorials' three-layer network: a forward pass with hand-set weights.

    python examples/three_layer_forward.py   # prints: output for x = [1.0, 0.5]: [0.31682708 0.69627909]
"""

import numpy as np

import portnn as pn


def tutorial_network() -> pn.Sequential:
    return pn.Sequential(
        pn.Dense(2, 3, weight=[[0.1, 0.3, 0.5], [0.2, 0.4, 0.6]], bias=[0.1, 0.2, 0.3]),
        pn.Sigmoid(),
        pn.Dense(3, 2, weight=[[0.1, 0.4], [0.2, 0.5], [0.3, 0.6]], bias=[0.1, 0.2]),
        pn.Sigmoid(),
        pn.Dense(2, 2, weight=[[0.1, 0.3], [0.2, 0.4]], bias=[0.1, 0.2]),
        pn.Identity(),
    )


if __name__ == "__main__":
    network = tutorial_network()
    x = [1.0, 0.5]
    y = network(x)
    print(f"output for x = {x}: {np.array2string(pn.to_numpy(y), precision=8)}")
