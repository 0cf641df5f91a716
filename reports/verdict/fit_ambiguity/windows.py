"""Split the fc1 tables of this folder at step 4e6: switches, pairs and share of margins < 0.01 per seed;
the WD controller's fc1 wd by which fit won. Run here: python windows.py > windows.txt"""
import pandas as pd
for run in ("paper_lr5e-4_wdctl_t2_s012", "paper_lr5e-4_wd0.01_s012"):
    d = pd.read_csv(f"{run}_fc1.csv").sort_values("step")
    for lo, hi in ((0, 4e6), (4e6, 1e8)):
        g = d[(d.step >= lo) & (d.step < hi)].groupby("seed")
        print(run, f"steps [{lo:.0e}, {hi:.0e})", "switches:", g.alpha.apply(lambda a: int((a.diff().abs() > 0.5).sum())).to_dict(),
              "pairs:", (g.size() - 1).to_dict(), "share margin < 0.01:", g.margin.apply(lambda m: round((m < 0.01).mean(), 2)).to_dict())
d = pd.read_csv("paper_lr5e-4_wdctl_t2_s012_fc1.csv")
print("controller fc1 wd by chosen alpha >= 3.1:", d.groupby(d.alpha >= 3.1).wd.agg(["count", "mean", "median"]).round(5).to_dict("index"))
print("median |alpha - alpha_ema|:", round((d.alpha - d.alpha_ema).abs().median(), 4))
