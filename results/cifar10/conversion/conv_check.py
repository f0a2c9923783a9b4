import sys, time, torch
from spikelite.train import load_model, checkpoint_data
from spikelite.snn import convert, layer_errors
torch.set_num_threads(2)
ck = sys.argv[1]; Ts = [int(t) for t in sys.argv[2].split(",")]; n = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
kw = eval(sys.argv[4]) if len(sys.argv) > 4 else {}
cnn, meta = load_model(ck)
val, _ = checkpoint_data(meta, ck, "val")
tr, _ = checkpoint_data(meta, ck, "train")
def norm(d, idx):
    x = d.images[idx].float() / 255.0
    m = torch.tensor(d.mean).view(1, -1, 1, 1); s = torch.tensor(d.std).view(1, -1, 1, 1)
    return (x - m) / s
g = torch.Generator().manual_seed(0)
vi = torch.randperm(len(val), generator=g)[:n]
xv, yv = norm(val, vi), val.labels[vi]
cal = norm(tr, torch.randperm(len(tr), generator=g)[:256])
def acc(model, bs=100):
    c = 0
    with torch.no_grad():
        for i in range(0, n, bs):
            c += int((model(xv[i:i+bs]).argmax(1) == yv[i:i+bs]).sum())
    return 100.0 * c / n
cnn.eval()
print("CNN", acc(cnn), flush=True)
t0 = time.time()
snn = convert(cnn, T=Ts[0], calibration=cal, **kw).eval()
print("converted in %.1fs" % (time.time() - t0), flush=True)
for T in Ts:
    snn.T = T
    t0 = time.time()
    print(f"T={T}: {acc(snn, max(10, 1600 // T)):.2f}  ({time.time()-t0:.0f}s)", flush=True)
if "--layers" in sys.argv:
    snn.T = Ts[0]
    for r in layer_errors(cnn, snn, xv[:200]):
        print(f"  {r['layer']:40s} {r['error']:.3f}")
