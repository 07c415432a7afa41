"""Evaluate a trained run folder: samples, sample grids and a Frechet distance per step count.

    python -m tvmlib.apps.evaluate --run-dir runs/NAME [--steps 1 2 4] [--solver heun]
        [--cfg-scale 1.5] [--num-samples N] [--inception PATH --ref-stats PATH] [--vae PATH]
        [--features MODULE:FN] [--weights ema|net|target] [--figures PREFIX] [--save-samples]
    torchrun --nproc_per_node=8 -m tvmlib.apps.evaluate --run-dir runs/im256_w2 \\
        --num-samples 50000 --inception weights-inception-2015-12-05-6726825d.pth \\
        --ref-stats imagenet256.npz [--dist-timeout-s 600]
    python -m tvmlib.apps.evaluate --make-ref-stats OUT.npz --folder IMAGENET/train \\
        --resolution 256 --inception PATH [--num-images 50000]

The run's sampler follows its loss (``tvmlib.training.build.sampler``): flow-map runs (TVM,
MeanFlow, CMT) jump ``--steps`` times at the training guidance; flow-matching runs integrate
their velocity with ``--solver`` (euler, heun, dpm++2m; NFE reported) and classifier-free
guidance ``--cfg-scale``. Metrics (``eval.metric``): ``classifier_fd`` (MNIST / Fashion-MNIST,
the project's classifier; not comparable with Inception FID), ``inception_fid`` (torch-fidelity's
Inception from a local weights file, against ``--ref-stats``), ``features_fd`` (any feature
function), ``none``. Writes ``eval.json`` and ``samples_<k>step.png`` into the run folder;
``--figures PREFIX`` copies them and the training log to ``figures/PREFIX_*``. Under torchrun
every process samples its share of the batches (a sample's noise and label depend on its index
only, so the samples are those of one process) and the feature moments are summed; the folder is
named with ``--run-dir`` (torchrun would read ``--run`` as its own ``--run-path``).
"""

from __future__ import annotations

import torch

from tvmlib.apps import cli
from tvmlib.evaluation.evaluate import evaluate_run, make_ref_stats
from tvmlib.evaluation.features import inception_features, load_feature_fn
from tvmlib.training.distributed import DEFAULT_TIMEOUT_S, init_distributed, shutdown

FLAGS = {"steps": "steps", "solver": "solver", "cfg_scale": "cfg_scale",
         "num_samples": "num_samples", "batch_size": "batch_size", "metric": "metric",
         "inception": "inception_weights", "ref_stats": "reference_stats",
         "features": "features", "vae": "vae", "seed": "seed"}


def parser() -> cli.Parser:
    ap = cli.Parser(prog="python -m tvmlib.apps.evaluate", description=__doc__)
    ap.add_argument("--run-dir", "--run", dest="run",
                    help="run folder (runs/NAME) with config.yaml and checkpoint.pt (under "
                         "torchrun write --run-dir: torchrun takes --run for its --run-path)")
    ap.add_argument("--steps", type=int, nargs="+", help="solver steps (jumps), e.g. 1 2 4")
    ap.add_argument("--solver", choices=["auto", "euler", "heun", "dpm++2m", "flowmap"])
    ap.add_argument("--cfg-scale", type=float, help="guidance w (FM: classifier-free guidance)")
    ap.add_argument("--num-samples", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--metric", choices=["classifier_fd", "inception_fid", "features_fd", "none"])
    ap.add_argument("--inception", help="local FID Inception weights (.pth)")
    ap.add_argument("--ref-stats", help="reference stats .npz (mu, sigma)")
    ap.add_argument("--features", help="feature function module:name or file.py:name")
    ap.add_argument("--vae", help="VAE folder for latent runs (default: the latents' VAE)")
    ap.add_argument("--weights", choices=["ema", "net", "target"])
    ap.add_argument("--seed", type=int)
    ap.add_argument("--figures", metavar="PREFIX", help="also write figures/PREFIX_*")
    ap.add_argument("--save-samples", action="store_true", help="write samples_<k>step.npz")
    ap.add_argument("--device", help="default: cuda (LOCAL_RANK) if available, else cpu")
    ap.add_argument("--dist-timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                    help="torchrun: fail when another process does not answer for this long")
    ap.add_argument("--make-ref-stats", metavar="OUT", help="write reference stats and exit")
    ap.add_argument("--folder", help="--make-ref-stats: ImageFolder root")
    ap.add_argument("--resolution", type=int, help="--make-ref-stats: image size")
    ap.add_argument("--num-images", type=int, help="--make-ref-stats: random subset size")
    return ap


def ref_stats(ap, args) -> dict:
    if not args.folder or not args.resolution:
        ap.error("--make-ref-stats needs --folder and --resolution")
    if bool(args.inception) == bool(args.features):
        ap.error("--make-ref-stats needs exactly one of --inception or --features")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    fn = inception_features(args.inception, device) if args.inception \
        else load_feature_fn(args.features)
    info = make_ref_stats(args.folder, args.resolution, fn, args.make_ref_stats,
                          args.batch_size or 250, args.num_images, device=device)
    print(f"[tvmlib.apps.evaluate] reference stats of {info['n']} images ({info['dim']}-d "
          f"features) written to {info['out']}", flush=True)
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = parser()
    args = ap.parse_args(argv)
    if args.make_ref_stats:
        return ref_stats(ap, args)
    if not args.run:
        ap.error("--run-dir is required (or --make-ref-stats)")
    overrides = {key: getattr(args, a) for a, key in FLAGS.items() if getattr(args, a) is not None}
    if args.weights:
        overrides["weights"] = [args.weights]
    if args.features and not args.metric:
        overrides["metric"] = "features_fd"
    if args.inception and not args.metric:
        overrides["metric"] = "inception_fid"
    if not args.dist_timeout_s > 0:
        ap.error(f"--dist-timeout-s must be > 0, got {args.dist_timeout_s}")
    _, _, device = init_distributed(args.dist_timeout_s, "--dist-timeout-s")
    try:
        return evaluate_run(args.run, overrides, device=args.device or device,
                            figures=args.figures, save_samples=args.save_samples)
    finally:
        shutdown()


if __name__ == "__main__":
    cli.run(main)
