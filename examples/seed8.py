"""A 2-4-1 sigmoid network learns to separate the tutorials' eight points.

    python examples/seed8.py                 # binary cross-entropy
    python examples/seed8.py mse             # mean squared error
"""

import sys

import numpy as np

import portnn as pn

X = np.array([[3, 1], [2, 5], [1, 8], [6, 4], [5, 2], [3, 5], [4, 7], [4, -1]], dtype=float)
y = np.array([0, 1, 1, 0, 0, 1, 1, 0])


def train(loss: str = "binary_cross_entropy", seed: int = 0) -> pn.Sequential:
    model = pn.Sequential(pn.Dense(2, 4, seed=seed), pn.Sigmoid(), pn.Dense(4, 1, seed=seed + 1), pn.Sigmoid())
    lr = 1.0 if loss == "mse" else 0.5
    model.fit(X, y, loss=loss, optimizer=pn.SGD(lr=lr, momentum=0.9), epochs=2000, seed=seed, verbose=0)
    return model


if __name__ == "__main__":
    loss = sys.argv[1] if len(sys.argv) > 1 else "binary_cross_entropy"
    model = train(loss)
    p = pn.to_numpy(model.predict(X))[:, 0]
    print(f"backend: {pn.get_backend()}  loss: {loss}")
    for point, label, prob in zip(X, y, p):
        print(f"  x={point}  label={label}  p(1)={prob:.3f}  predicted={int(prob > 0.5)}")
    accuracy = np.mean((p > 0.5) == y)
    print(f"accuracy: {accuracy:.0%}")
