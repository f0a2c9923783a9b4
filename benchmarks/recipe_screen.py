"""Recipe screening for spiking SqueezeNet on CIFAR-10 (the protocol of docs/recipe.md).

A fixed, cheap protocol: squeezenet1_1 (BatchNorm, stem_reduction=2 for speed) trained from scratch
on a seeded 10,000-image subset of the 45k training images for 3 epochs, batch 128, cosine LR,
crop+flip augmentation, validated on 2,000 of the 5,000 held-out images (last 500 per class).
One run per invocation; results are printed per epoch and saved as JSON under --runs.

    python benchmarks/recipe_screen.py --root DATA/cifar10/train --name s_default --snn \
        --train-n 10000 --val-n 2000 --epochs 3 --model-kw '{"stem_reduction":2}'
"""
import argparse, json, time, math, os, sys
import torch, torch.nn.functional as F
from spikelite.models import create_model
from spikelite.snn import spikify

def load_cifar_jpeg(root, cache):
    """Decode the CIFAR-10 JPEG ImageFolder once; validation = the last 500 files of every class."""
    import os
    import numpy as np
    from PIL import Image
    if cache and os.path.exists(cache):
        return torch.load(cache)
    classes = sorted(os.listdir(root))
    X, Y, V = [], [], []
    for ci, c in enumerate(classes):
        files = sorted(os.listdir(os.path.join(root, c)))
        for j, f in enumerate(files):
            X.append(np.asarray(Image.open(os.path.join(root, c, f)).convert("RGB")))
            Y.append(ci)
            V.append(j >= len(files) - 500)
    d = {"x": torch.from_numpy(np.stack(X)).permute(0, 3, 1, 2).contiguous(), "y": torch.tensor(Y),
         "val": torch.tensor(V), "classes": classes}
    if cache:
        torch.save(d, cache)
    return d
p = argparse.ArgumentParser()
p.add_argument('--name', required=True); p.add_argument('--root', required=True); p.add_argument('--cache', default=None); p.add_argument('--runs', default='runs/recipe'); p.add_argument('--snn', action='store_true'); p.add_argument('--T', type=int, default=4)
p.add_argument('--epochs', type=int, default=2); p.add_argument('--train-n', type=int, default=45000); p.add_argument('--bs', type=int, default=128)
p.add_argument('--lr', type=float, default=0.1); p.add_argument('--wd', type=float, default=5e-4); p.add_argument('--opt', default='sgd')
p.add_argument('--neuron', default='{}'); p.add_argument('--model-kw', default='{}'); p.add_argument('--tet', action='store_true')
p.add_argument('--init', default=None); p.add_argument('--balance', type=float, default=None); p.add_argument('--ls', type=float, default=0.0)
p.add_argument('--save', default=None); p.add_argument('--val-n', type=int, default=5000); p.add_argument('--warmup', type=float, default=0.0)
a = p.parse_args()
torch.manual_seed(0)
d = load_cifar_jpeg(a.root, a.cache)
tr = (~d['val']).nonzero().flatten(); va = d['val'].nonzero().flatten()
g = torch.Generator().manual_seed(0)
tr = tr[torch.randperm(len(tr), generator=g)[:a.train_n]]; va = va[torch.randperm(len(va), generator=g)[:a.val_n]]
X = d['x']; Y = d['y']
mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1,3,1,1); std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1,3,1,1)
def norm(x): return (x.float()/255 - mean)/std
def aug(x, gen):
    n = x.shape[0]; xp = F.pad(x, (4,4,4,4))
    i = torch.randint(0, 9, (n,), generator=gen); j = torch.randint(0, 9, (n,), generator=gen)
    idx = torch.arange(32)
    rows = (i.view(n,1)+idx.view(1,32)); cols = (j.view(n,1)+idx.view(1,32))
    out = xp[torch.arange(n).view(n,1,1,1), torch.arange(3).view(1,3,1,1), rows.view(n,1,32,1), cols.view(n,1,1,32)]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out
mk = json.loads(a.model_kw)
cnn = create_model('squeezenet1_1', num_classes=10, image_size=32, **mk)
if a.init:
    sd = torch.load(a.init); cnn.load_state_dict(sd)
model = cnn
if a.snn:
    cal = norm(X[tr[:256]]) if a.balance else None
    model = spikify(cnn, T=a.T, neuron=json.loads(a.neuron), balance=a.balance, calibration=cal)
decay, no_decay = [], []
for n_, p_ in model.named_parameters():
    (no_decay if p_.ndim <= 1 else decay).append(p_)
groups = [{'params': decay, 'weight_decay': a.wd}, {'params': no_decay, 'weight_decay': 0}]
opt = torch.optim.SGD(groups, lr=a.lr, momentum=0.9, nesterov=True) if a.opt == 'sgd' else torch.optim.AdamW(groups, lr=a.lr, weight_decay=a.wd)
steps_per = math.ceil(len(tr)/a.bs); total = steps_per*a.epochs; wsteps = int(a.warmup*steps_per)
def lr_at(s):
    if s < wsteps: return a.lr*(s+1)/wsteps
    return a.lr*0.5*(1+math.cos(math.pi*(s-wsteps)/max(1,total-wsteps)))
def evaluate():
    model.eval(); correct = 0
    with torch.no_grad():
        for k in range(0, len(va), 500):
            b = va[k:k+500]; out = model(norm(X[b])); correct += (out.argmax(1) == Y[b]).sum().item()
    model.train(); return correct/len(va)
log = {'args': vars(a), 'epochs': []}
step = 0; gen = torch.Generator().manual_seed(1)
for ep in range(a.epochs):
    t0 = time.time(); perm = tr[torch.randperm(len(tr), generator=gen)]; tl = 0; tc = 0; tn = 0
    model.train()
    for k in range(0, len(perm), a.bs):
        b = perm[k:k+a.bs]; x = norm(aug(X[b], gen)); y = Y[b]
        for gp in opt.param_groups: gp['lr'] = lr_at(step)
        if a.snn and a.tet:
            outs = model.forward_steps(x); loss = sum(F.cross_entropy(o, y, label_smoothing=a.ls) for o in outs)/outs.shape[0]; out = outs.mean(0)
        else:
            out = model(x); loss = F.cross_entropy(out, y, label_smoothing=a.ls)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); step += 1
        tl += loss.item()*len(b); tc += (out.argmax(1)==y).sum().item(); tn += len(b)
        if not math.isfinite(loss.item()): print('nan'); sys.exit(1)
    dt = time.time()-t0; acc = evaluate()
    e = {'epoch': ep+1, 'train_loss': tl/tn, 'train_acc': tc/tn, 'val_acc': acc, 'sec': dt}
    log['epochs'].append(e); print(a.name, e, flush=True)
os.makedirs(a.runs, exist_ok=True)
json.dump(log, open(os.path.join(a.runs, f'{a.name}.json'), 'w'), indent=1)
if a.save: torch.save(cnn.state_dict() if not a.snn else model.state_dict(), a.save)
