"""Known inputs of the example iris model, one of each class (from the iris data set)."""

IRIS = {
    "setosa": [5.1, 3.5, 1.4, 0.2],
    "versicolor": [5.9, 3.0, 4.2, 1.5],
    "virginica": [6.7, 3.0, 5.2, 2.3],
}
ROW = IRIS["setosa"]
