"""`simexplain models` (list the zoo) and `simexplain train` (train a zoo model)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    models = commands.add_parser("models", help="list the model zoo")
    models.set_defaults(run=cmd_models)
    commands.add_parser(
        "train", help="train a zoo model (fmnist-gap, fmnist-gmp, fmnist-vit, fmnist-sketch)",
        configure=add_train_options)


def add_train_options(train: argparse.ArgumentParser) -> None:
    from ..train_options import add_train_arguments  # no torch: `train --help` answers at once
    add_train_arguments(train)
    train.set_defaults(run=cmd_train)


def cmd_models(args: argparse.Namespace) -> int:
    from .. import zoo
    for name in zoo.list():
        entry = zoo.entry(name)
        print(f"{name:20s} layer={entry.layer:12s} {entry.similarity:9s} {entry.description}; "
              f"input: {entry.preprocess.describe()}" + (", face crops" if entry.faces else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import cli_train
    return cli_train(args) or 0
