"""``vosrt eval``: J&F against ground truth, or IoU agreement of two prediction folders."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="J&F against ground truth, or IoU agreement of two prediction folders",
                       description="--pred DIR --gt DIR: J&F (DAVIS protocol: first and last frame skipped; label "
                                   "255 in the ground truth is void and scored for no object, as the DAVIS toolkit "
                                   "does; a ground truth a few pixels off the frame size is aligned as the official "
                                   "code aligns masks) computed by the vos-benchmark package. --compare DIR_A DIR_B: per-frame IoU agreement of "
                                   "two prediction folders, e.g. an fp16 engine against eager. A folder is one video "
                                   "(PNG label maps inside) or a dataset (one sub-folder per video).")
    p.add_argument("--pred", help="predicted label maps")
    p.add_argument("--gt", help="ground-truth label maps")
    p.add_argument("--compare", nargs=2, metavar=("DIR_A", "DIR_B"), help="two prediction folders")
    p.add_argument("--all-frames", action="store_true", help="J&F: score the first and last frame too")
    p.add_argument("--json", help="write the scores as JSON here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from vosrt import evaluate
    from vosrt.runtime import safe_write

    scoring = args.pred is not None or args.gt is not None
    if (args.compare is None) != scoring or (scoring and (args.pred is None or args.gt is None)):
        raise ValueError("give either --pred DIR --gt DIR, or --compare DIR_A DIR_B")
    if args.compare:
        frames = evaluate.compare_predictions(*args.compare)
        report = evaluate.agreement_report(frames)
        print(evaluate.format_agreement(report))
    else:
        score = evaluate.jf_score(args.pred, args.gt, skip_first_and_last=not args.all_frames)
        report = evaluate.score_report(score)
        print(evaluate.format_score(score))
    if args.json:
        safe_write.write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
