"""``lightm models``: the pretrained models that ship with the package, and the user's own."""

from __future__ import annotations

import argparse

from napari_lightm.cli._common import CLIError


def cmd_models(args: argparse.Namespace) -> int:
    from napari_lightm.engine.store import models_dir, recent_models
    from napari_lightm.engine.zoo import find_pretrained, pretrained_models

    if args.card:
        model = find_pretrained(args.card)
        if model is None:
            names = ", ".join(m.name for m in pretrained_models()) or "none"
            raise CLIError(f"no pretrained model {args.card!r} (pretrained: {names})")
        print(model.card_text() or f"{model.name} has no model card")
        return 0
    print("pretrained (use by name: lightm predict --model NAME INPUT OUTPUT):")
    shipped = pretrained_models()
    for model in shipped:
        spacing = "" if model.spacing is None else f", {model.spacing[-1]:g} mm pixels"
        print(f"  {model.describe()}{spacing}")
    if not shipped:
        print("  (none installed)")
    folder = models_dir(create=False)
    user = recent_models(folder)
    print(f"your models ({folder}):")
    for path in user:
        print(f"  {path}")
    if not user:
        print("  (none yet: fine-tune in napari or with `lightm finetune`)")
    print("lightm models --card NAME prints a pretrained model's card")
    return 0


def add_parser(sub, common) -> None:
    p = sub.add_parser(
        "models",
        help="list the pretrained models and your own",
        description="List the pretrained models shipped with napari-lightm (usable by name) "
        "and the checkpoints in your model folder (NAPARI_LIGHTM_MODELS).",
    )
    p.add_argument("--card", metavar="NAME", default=None,
                   help="print the model card of a pretrained model")
    p.set_defaults(func=cmd_models)
