"""The Lightning plugin with a real lightning.Trainer on CPU: a small CNN and a small transformer
train exactly as adaprec's own loop does (clipping and accumulation included), a checkpoint
resumes bit-identically, a threshold run switches, and decisions and statistics reach the loggers."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from adaprec import AdaptivePrecision  # noqa: E402
from adaprec.controllers import Static, Threshold  # noqa: E402
from adaprec.integrations.lightning import AdaptivePrecisionPlugin  # noqa: E402
from adaprec.models.cnn import SmallCNN  # noqa: E402
from adaprec.models.gpt import GPT  # noqa: E402

pytestmark = pytest.mark.slow  # each test starts real Trainers (seconds each on 2 cores)

BATCH, BATCHES = 8, 3  # one epoch = 3 batches


class Classifier(pl.LightningModule):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def training_step(self, batch, _):
        x, y = batch
        loss = self.loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    @staticmethod
    def loss(out, y):
        if out.dim() == 3:  # language model: logits per position
            return F.cross_entropy(out.reshape(-1, out.size(-1)), y.reshape(-1))
        return F.cross_entropy(out, y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def cnn():
    torch.manual_seed(0)
    return SmallCNN(in_channels=1, num_classes=4, width=4)


def transformer():
    torch.manual_seed(0)
    return GPT(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)


def dataset(kind, batches=BATCHES):
    g = torch.Generator().manual_seed(1)
    n = BATCH * batches
    if kind == "cnn":
        return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))
    tokens = torch.randint(0, 32, (n, 9), generator=g)
    return TensorDataset(tokens[:, :-1], tokens[:, 1:])


def loader(kind, batches=BATCHES):
    return DataLoader(dataset(kind, batches), batch_size=BATCH, shuffle=False)


def trainer(plugin, tmp_path, steps, **kw):
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, plugins=[plugin],
                      enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, **kw)


def own_loop(net, kind, steps, controller, clip=0.0, accum=1):
    """The same training in adaprec's own loop: the reference the plugin must equal."""
    module = Classifier(net)
    opt = module.configure_optimizers()
    ap = AdaptivePrecision(module, controller=controller, executor="emulated", monitor_every=2)
    batches = list(loader(kind))
    records, i = [], 0
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            x, y = batches[i % len(batches)]
            i += 1
            with ap.autocast():
                loss = module.loss(net(x), y) / accum
            ap.backward(loss)
        ap.unscale_(opt)
        if clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        records.append(ap.step(opt))
    return module, ap, records


def assert_same_weights(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("kind,factory", [("cnn", cnn), ("transformer", transformer)])
@pytest.mark.parametrize("clip,accum", [(0.0, 1), (0.05, 1), (0.0, 3)],
                         ids=["plain", "clipped", "accumulated"])
def test_lightning_training_equals_adaprecs_own_loop(tmp_path, kind, factory, clip, accum):
    steps = 4
    plugin = AdaptivePrecisionPlugin(controller=Static("fp16"), executor="emulated", monitor_every=2)
    module = Classifier(factory())
    trainer(plugin, tmp_path, steps, gradient_clip_val=clip or None,
            accumulate_grad_batches=accum).fit(module, loader(kind))
    ref, ref_ap, records = own_loop(factory(), kind, steps, Static("fp16"), clip, accum)
    assert plugin.ap.step_count == steps
    assert plugin.ap.get_scale() == ref_ap.get_scale() == 2.0**16  # fp16: loss scaling on
    assert plugin.ap.last_record.loss == records[-1].loss
    assert_same_weights(module, ref)


def test_clipping_acts_on_unscaled_gradients(tmp_path):
    """Clipped at a norm far below the scaled one but above the true one changes nothing."""
    plugin = AdaptivePrecisionPlugin(controller=Static("fp16"), executor="emulated", monitor_every=0)
    clipped, plain = Classifier(cnn()), Classifier(cnn())
    trainer(plugin, tmp_path, 2, gradient_clip_val=1e3).fit(clipped, loader("cnn"))  # << 2^16 x true norm
    trainer(AdaptivePrecisionPlugin(controller=Static("fp16"), executor="emulated", monitor_every=0),
            tmp_path, 2).fit(plain, loader("cnn"))
    assert_same_weights(clipped, plain)


def test_checkpoint_and_resume_continue_bit_identically(tmp_path):
    def plugin():
        # switches fp32 -> bf16 at step 4, after the checkpoint at step 3
        return AdaptivePrecisionPlugin(controller=Threshold(start="fp32", cpu_fp16=True, interval=2,
                                                            patience=2, cooldown=1),
                                       executor="emulated", monitor_every=1)

    # one batch per epoch: Lightning restarts a plain DataLoader from its first batch on resume
    # (it counts on the batch index it saved), so only then is the data order the same as the
    # uninterrupted run's; what is tested is that model, optimizer and adaprec state continue
    straight_plugin, straight = plugin(), Classifier(cnn())
    trainer(straight_plugin, tmp_path / "a", 6).fit(straight, loader("cnn", 1))
    first, first_plugin = Classifier(cnn()), plugin()
    first_trainer = trainer(first_plugin, tmp_path / "b", 3)
    first_trainer.fit(first, loader("cnn", 1))
    path = tmp_path / "step3.ckpt"
    first_trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)  # Lightning's file holds only plain values and tensors
    assert saved["AdaptivePrecisionPlugin"]["step"] == 3
    assert saved["adaprec_plan"] == dict(first_plugin.ap.plan)

    resumed_plugin, resumed = plugin(), Classifier(cnn())
    trainer(resumed_plugin, tmp_path / "c", 6).fit(resumed, loader("cnn", 1), ckpt_path=path)
    assert_same_weights(resumed, straight)
    a, b = resumed_plugin.ap, straight_plugin.ap
    assert a.step_count == b.step_count == 6
    after_resume = [d for d in b.decisions if d["step"] > 3]
    assert after_resume and [d for d in a.decisions if d["step"] > 0] == after_resume
    assert dict(a.plan) == dict(b.plan)
    assert a.scaler.state_dict()["scale"] == b.scaler.state_dict()["scale"]
    assert a.controller.state_dict() == b.controller.state_dict()


def test_threshold_run_switches_and_decisions_and_statistics_reach_the_loggers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = pl.loggers.TensorBoardLogger(tmp_path, name="tb", version=0)
    csv = pl.loggers.CSVLogger(tmp_path, name="csv", version=0)
    plugin = AdaptivePrecisionPlugin(controller=Threshold(start="fp32", cpu_fp16=True, interval=2),
                                     executor="emulated", monitor_every=2)
    trainer(plugin, tmp_path, 6, logger=[tb, csv], log_every_n_steps=1).fit(Classifier(cnn()), loader("cnn"))
    assert plugin.ap.decisions == []  # every decision was handed to the loggers
    ea = EventAccumulator(tb.log_dir, size_guidance={"scalars": 0, "tensors": 0, "histograms": 0})
    ea.Reload()
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in ea.Tensors("adaprec/decisions/text_summary")}
    later = {step: text for step, text in texts.items() if step > 0}
    assert later, "the threshold controller never switched"
    assert all("->" in line and "(" in line for text in later.values() for line in text.split("\n"))
    assert [e.step for e in ea.Scalars("adaprec/train/loss_scale")] == list(range(6))
    assert ea.Histograms("adaprec/layer_stats/act_absmax")
    assert any(tag.startswith("adaprec/layers/") for tag in ea.Tags()["scalars"])
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "csv" / "version_0" / "metrics.csv")
    assert "adaprec/train/share_fp16" in metrics and "adaprec/decisions" in metrics
    assert metrics["adaprec/decisions"].dropna().sum() == sum(len(t.split("\n")) for t in texts.values())
