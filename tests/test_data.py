"""Data: deterministic in-memory loaders, CIFAR/ImageNet read from files in their real on-disk formats."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

from normrepro.data import DATASET_NAMES, InMemoryLoader, batch_crop, build_data
from normrepro.data.sources import CIFAR_MEAN, CIFAR_STD, make_synthetic
from normrepro.errors import ConfigError
from tests.helpers.config import CONF, dataset_cfg
from tests.helpers.data import write_cifar, write_imagenet

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def one_thread():
    """The CPU is shared: one intra-op thread here, restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b)) and \
        all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


def unnormalize(x, mean, std):
    """Normalized float images back to pixel values 0..255 (float)."""
    return x * torch.tensor(std).view(1, -1, 1, 1) * 255 + torch.tensor(mean).view(1, -1, 1, 1) * 255


def test_digits_shapes_split_and_determinism():
    b = build_data(dataset_cfg("digits", image_size=12), 64, 100, CPU, seed=3)
    assert (b.num_classes, b.in_channels, b.image_size, b.name) == (10, 1, 12, "digits")
    assert (b.num_train, b.num_test) == (1437, 360)
    x, y = next(iter(b.train))
    assert x.shape == (64, 1, 12, 12) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(b.train) == 1437 // 64 and len(b.test) == 4 and len(batches(b.test, 0)[-1][1]) == 60
    e1 = batches(b.train, 1)
    assert len(e1) == len(b.train) and all(len(yy) == 64 for _, yy in e1)  # last partial batch dropped
    again = build_data(dataset_cfg("digits", image_size=12), 64, 100, CPU, seed=3)
    assert same(e1, batches(again.train, 1))
    assert not torch.equal(e1[0][0], batches(b.train, 2)[0][0])
    other_seed = build_data(dataset_cfg("digits", image_size=12), 64, 100, CPU, seed=4)
    assert not torch.equal(e1[0][1], batches(other_seed.train, 1)[0][1])
    assert same(batches(b.test, 0), batches(other_seed.test, 5))  # fixed split, no shuffle, no augmentation
    xt = torch.cat([x for x, _ in b.test])  # normalized with the training split's statistics
    assert abs(xt.mean().item()) < 0.1 and 0.8 < xt.std().item() < 1.2


def test_digits_options():
    b = build_data(dataset_cfg("digits", image_size=8, in_channels=3, drop_last=False), 500, 500, CPU, 0)
    assert b.in_channels == 3 and len(b.train) == 3
    x, _ = next(iter(b.test))
    assert x.shape == (360, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    assert len(batches(b.train, 0)[-1][1]) == 1437 - 1000


def test_resumed_epoch_matches_uninterrupted():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    make = lambda: InMemoryLoader(x, torch.arange(50), 8, [0.5] * 3, [0.25] * 3, shuffle=True, pad=2,  # noqa: E731
                                  flip=True, seed=7, drop_last=True)
    run = make()
    seen = [batches(run, e) for e in range(3)]
    assert same(seen[2], batches(make(), 2)) and not same(seen[1], seen[2])


@pytest.mark.parametrize("world_size", [2, 3])
def test_rank_shards_are_disjoint_and_cover(world_size):
    n, batch = 24, 4
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 3, 3).contiguous()
    y = torch.arange(n)

    def loader(rank, ws, bs):
        return InMemoryLoader(x, y, bs, [0.0], [1 / 255], shuffle=True, pad=1, flip=True, seed=0, drop_last=True,
                              rank=rank, world_size=ws)

    ranks = [batches(loader(r, world_size, batch), 0) for r in range(world_size)]
    labels = [torch.cat([yy for _, yy in r]).tolist() for r in ranks]
    assert sorted(sum(labels, [])) == list(range(n)) and all(len(set(lab)) == len(lab) for lab in labels)
    assert len({len(r) for r in ranks}) == 1  # equal batch counts: DDP steps in lockstep
    # the ranks' batch b together is the single-process batch b of world_size x the size, augmentation included
    single = batches(loader(0, 1, batch * world_size), 0)
    for b, (xs, ys) in enumerate(single):
        parts = [r[b] for r in ranks]
        order = torch.cat([p[1] for p in parts]).argsort()
        assert torch.equal(ys.sort().values, torch.cat([p[1] for p in parts])[order])
        assert torch.equal(xs[ys.argsort()], torch.cat([p[0] for p in parts])[order])
    test = [InMemoryLoader(x[:10], y[:10], 3, [0.0], [1 / 255], rank=r, world_size=3) for r in range(3)]
    assert [torch.cat([yy for _, yy in t]).tolist() for t in test] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_batch_crop_and_flip_match_manual():
    img = torch.randint(0, 256, (3, 2, 6, 6), dtype=torch.uint8)
    padded = F.pad(img, (2, 2, 2, 2))
    dy, dx, flip = torch.tensor([0, 3, 4]), torch.tensor([4, 1, 0]), torch.tensor([False, True, True])
    out, out_flipped = batch_crop(padded, dy, dx, 6), batch_crop(padded, dy, dx, 6, flip)
    for i in range(3):
        crop = padded[i, :, dy[i]:dy[i] + 6, dx[i]:dx[i] + 6]
        assert torch.equal(out[i], crop) and torch.equal(out_flipped[i], crop.flip(2) if flip[i] else crop)


def test_loader_augmentation_is_a_padded_shifted_copy():
    n, pad = 64, 3
    img = torch.randint(1, 256, (n, 3, 8, 8), dtype=torch.uint8)
    padded = F.pad(img, (pad,) * 4)  # zero padding, like torchvision RandomCrop(padding=pad)
    loader = InMemoryLoader(img, torch.arange(n), n, [0.0] * 3, [1 / 255] * 3, shuffle=True, pad=pad, flip=True,
                            seed=1, drop_last=True)
    xb, yb = next(iter(loader))
    flips = shifts = 0
    for x, i in zip(xb.round().to(torch.uint8), yb):
        views = [(padded[i, :, a:a + 8, b:b + 8], f) for a in range(2 * pad + 1) for b in range(2 * pad + 1)
                 for f in (0, 1)]
        matches = [(a_b, f) for a_b, (v, f) in enumerate(views) if torch.equal(x, v.flip(2) if f else v)]
        assert matches, "not a crop of the zero-padded image"
        flips += matches[0][1]
        shifts += matches[0][0] // 2 != pad * (2 * pad + 1) + pad
    assert 10 < flips < n - 10 and shifts > n // 2
    plain = InMemoryLoader(img, torch.arange(n), 10, [0.0] * 3, [1 / 255] * 3, shuffle=True, seed=1)
    for x, i in plain:
        assert torch.equal(x.round().to(torch.uint8), img[i])


def test_synthetic_is_deterministic_and_learnable():
    cfg = dataset_cfg("synthetic", num_train=400, num_test=200, image_size=8, in_channels=3, num_classes=4, pad=0,
                      flip=False)
    a, b = build_data(cfg, 400, 200, CPU, seed=0), build_data(cfg, 400, 200, CPU, seed=0)
    (xa, ya), (xb, yb) = next(iter(a.train)), next(iter(b.train))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and ya.bincount().tolist() == [100] * 4
    raw = make_synthetic(40, 8, 4, 8, 3, 0.3, data_seed=0)[0][0]
    assert torch.equal(raw, make_synthetic(40, 8, 4, 8, 3, 0.3, data_seed=0)[0][0])
    assert not torch.equal(raw, make_synthetic(40, 8, 4, 8, 3, 0.3, data_seed=1)[0][0])
    xt, yt = next(iter(a.test))
    w = torch.zeros(3 * 8 * 8, 4, requires_grad=True)  # logistic regression, a few full-batch gradient steps
    for _ in range(20):  # (plain tensors: torch.optim's first step imports dynamo, ~1 s)
        F.cross_entropy(xa.flatten(1) @ w, ya).backward()
        with torch.no_grad():
            w -= 0.1 * w.grad
        w.grad = None
    assert ((xt.flatten(1) @ w).argmax(1) == yt).float().mean() > 0.6  # chance is 0.25


def test_synthetic_imagenet_shape_is_quick():
    cfg = dataset_cfg("synthetic_imagenet", num_train=64, num_test=16)
    b = build_data(cfg, 32, 16, CPU, 0)
    assert (b.num_classes, b.in_channels, b.image_size, len(b.train)) == (10, 3, 224, 2)
    assert next(iter(b.train))[0].shape == (32, 3, 224, 224)


@pytest.mark.parametrize("name,bytes_keys", [("cifar10", True), ("cifar100", True), ("cifar10", False)])
def test_cifar_real_format_round_trip(tmp_path, name, bytes_keys):
    written = write_cifar(tmp_path, name, 4, 3, bytes_keys)
    cfg = dataset_cfg(name, root=str(tmp_path), pad=0, flip=False)
    b = build_data(cfg, 2, 100, CPU, seed=0)
    assert (b.num_train, b.num_test, b.in_channels, b.image_size) == (20 if name == "cifar10" else 4, 3, 3, 32)
    assert b.num_classes == (10 if name == "cifar10" else 100)
    x, y = next(iter(b.test))
    test_data, test_labels = written["test_batch" if name == "cifar10" else "test"]
    pixels = unnormalize(x, CIFAR_MEAN, CIFAR_STD)
    assert (pixels - pixels.round()).abs().max() < 1e-3
    pixels = pixels.round().to(torch.uint8)
    for i, row, col in [(0, 0, 0), (1, 5, 17), (2, 31, 30)]:  # 3072 = R plane, G plane, B plane, each row-major
        assert pixels[i, :, row, col].tolist() == [int(test_data[i, ch * 1024 + row * 32 + col]) for ch in range(3)]
    assert torch.equal(pixels, torch.from_numpy(test_data).view(3, 3, 32, 32)) and y.tolist() == test_labels
    # training images with pad=0 and no flip: exactly the normalized originals, shuffled
    train_data = np.concatenate([written[f][0] for f in written if "test" not in f])
    train_labels = sum((written[f][1] for f in written if "test" not in f), [])
    for xt, yt in batches(b.train, 3):
        xt = unnormalize(xt, CIFAR_MEAN, CIFAR_STD).round().to(torch.uint8)
        for img, lab in zip(xt, yt):
            i = int(img[0, 0, 0])
            assert torch.equal(img, torch.from_numpy(train_data[i]).view(3, 32, 32)) and lab == train_labels[i]


def test_cifar_augmentation_defaults(tmp_path):
    write_cifar(tmp_path, "cifar10", 10, 2)
    b = build_data(dataset_cfg("cifar10", root=str(tmp_path)), 50, 2, CPU, 0)
    assert (b.train.pad, b.train.flip, b.test.pad, b.test.flip) == (4, True, 0, False)


def test_missing_data_names_path(tmp_path):
    with pytest.raises(ConfigError, match=f"CIFAR-10 not found under '{tmp_path}' \\(expected cifar-10-batches-py/"):
        build_data(dataset_cfg("cifar10", root=str(tmp_path)), 2, 2, CPU, 0)
    with pytest.raises(ConfigError, match=f"CIFAR-100 not found under '{tmp_path / 'x'}'.*dataset.download=true"):
        build_data(dataset_cfg("cifar100", root=str(tmp_path / "x")), 2, 2, CPU, 0)
    write_cifar(tmp_path, "cifar10", 2, 2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="lacks data_batch_3"):
        build_data(dataset_cfg("cifar10", root=str(tmp_path)), 2, 2, CPU, 0)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"truncated")
    with pytest.raises(ConfigError, match="could not read CIFAR batch .*data_batch_3"):
        build_data(dataset_cfg("cifar10", root=str(tmp_path)), 2, 2, CPU, 0)
    with pytest.raises(ConfigError, match=f"ImageNet folder '{tmp_path / 'train'}' not found"):
        build_data(dataset_cfg("imagenet", root=str(tmp_path)), 2, 2, CPU, 0)
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'; choose one of: cifar10, cifar100, digits"):
        build_data({"name": "mnist"}, 2, 2, CPU, 0)
    assert set(DATASET_NAMES) == {"digits", "mnist5k", "synthetic", "cifar10", "cifar100", "imagenet"}


def test_imagenet_folder_layout(tmp_path):
    write_imagenet(tmp_path)
    cfg = dataset_cfg("imagenet", root=str(tmp_path), image_size=32, num_workers=0)
    b = build_data(cfg, 4, 4, CPU, 0)
    assert (b.num_classes, b.in_channels, b.image_size, b.num_train, b.num_test) == (2, 3, 32, 8, 4)
    assert (len(b.train), len(b.test)) == (2, 1)
    x, y = batches(b.train, 0)[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and set(y.tolist()) <= {0, 1}
    assert -3 < x.min() < x.max() < 3  # normalized with the ImageNet statistics
    xv, yv = next(iter(b.test))
    assert xv.shape == (4, 3, 32, 32) and yv.tolist() == [0, 0, 1, 1]
    again = build_data(cfg, 4, 4, CPU, 0)
    assert same(batches(b.train, 1), batches(again.train, 1)) and not same(batches(b.train, 1), batches(b.train, 2))
    shards = [build_data(cfg, 2, 4, CPU, 0, rank=r, world_size=2) for r in range(2)]
    assert [torch.cat([yy for _, yy in batches(s.test, 0)]).tolist() for s in shards] == [[0, 1], [0, 1]]
    assert all(len(s.train) == 2 for s in shards)
    # augmentation seeded per image, not per worker
    workers = build_data(dataset_cfg("imagenet", root=str(tmp_path), image_size=32, num_workers=1), 4, 4, CPU, 0)
    assert same(batches(b.train, 1), batches(workers.train, 1)) and same(batches(b.test, 0), batches(workers.test, 0))


def test_imagenet_val_must_be_in_class_folders(tmp_path):
    write_imagenet(tmp_path, n_val=0)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "flat.JPEG")
    with pytest.raises(ConfigError, match="has no images in <class>/ subfolders"):
        build_data(dataset_cfg("imagenet", root=str(tmp_path), num_workers=0), 2, 2, CPU, 0)


def test_dataset_configs_have_the_shared_keys():
    for path in sorted((CONF / "dataset").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        assert cfg.name in DATASET_NAMES and {"num_classes", "image_size", "in_channels"} <= set(cfg), path.name
    digits = build_data(dataset_cfg("digits"), 128, 512, CPU, 0)
    assert (digits.image_size, digits.in_channels, digits.train.pad, digits.train.flip) == (16, 1, 2, False)


def test_dataset_options_come_from_the_yaml_alone():
    """build_data has no defaults of its own: a key the YAML does not set is a ConfigError naming it."""
    cfg = dataset_cfg("digits")
    del cfg["pad"]
    with pytest.raises(ConfigError, match=r"dataset.pad is not set \(normrepro/conf/dataset/digits.yaml"):
        build_data(cfg, 128, 512, CPU, 0)
    for name in ("cifar10", "cifar100"):  # the paper's normalization (docs/paper.md §2)
        cfg = dataset_cfg(name)
        assert (tuple(cfg.mean), tuple(cfg.std)) == (CIFAR_MEAN, CIFAR_STD)
