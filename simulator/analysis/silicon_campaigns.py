"""What a measured serving run's row leaves unstated but its measurement campaign shows.

AIConfigurator's silicon rows name a backend, version and layout but no speculative setting. A
campaign is the rows of one (backend, version, date measured), read from the row's source notes.
"""

from __future__ import annotations

# Campaigns of AIConfigurator's TensorRT-LLM DeepSeek-R1 runs on B200 that drafted with the MTP layer.
# The same image (release 1.1.0rc2.post2) measured the same recorded configurations at 0.53x the TPOT
# on 2026-01-14 that it did on 2025-12-15 with <= 8 users (6 configurations) and 0.65x at 9-32 (6), so
# what changed is the launch, not the software. Likewise 1.2.0rc6.post3 of 2026-02-05/06 against
# 1.2.0rc6.post2 of 2026-01-29/02-03 (0.54-0.82x, 39 configurations) and against a 2025-11-02 campaign
# (0.50x). One MTP draft accepted 85% of the time gives at most 1 / 1.85 = 0.54x, less the draft's and
# the verification's cost: the size of these ratios (a few FP8 pairs at 4 users go to 0.43x, so some
# runs may have drafted or accepted more). `python benchmarks/silicon_campaigns.py` prints
# them. AIConfigurator's generator runs DeepSeek with MTP when its nextn is set
# (generator/rule_plugin/benchmark/trtllm.rule: speculative_decoding_type MTP, num_nextn_predict_layers
# nextn), and its DeepSeek defaults are one draft at 0.85 (docs/advanced_tuning.md, the
# deepseek_default.yaml template: nextn 1, nextn_accept_rates [0.85, 0, 0, 0, 0]; its CLI guide:
# "nextn: 1 for deepseek"). 0.85 is the DeepSeek-V3 technical report's lower bound for the second
# token too (arXiv 2412.19437, section 5.4.3). Nothing here is fitted
# on the rows' TPOT; the two 0.8.1.post2 campaigns, by contrast, agree (1.00-1.01).
MTP_CAMPAIGNS = (("trtllm", "1.1.0rc2.post2", "2026-01-14"), ("trtllm", "1.2.0rc6.post3", "2026-02-05"),
                 ("trtllm", "1.2.0rc6.post3", "2026-02-06"))
MTP_DRAFT = {"method": "mtp", "num_speculative_tokens": 1, "acceptance": {"rate": 0.85}}
MTP_NOTE = (f"drafts with its MTP layer, k {MTP_DRAFT['num_speculative_tokens']}, acceptance "
            f"{MTP_DRAFT['acceptance']['rate']} (campaign {{campaign}}: about 0.5-0.7x the TPOT of other "
            "campaigns' identical configurations)")


def campaign(r: dict) -> tuple[str, str, str]:
    """(backend, version, date measured) of a row; the date is '' where its source notes lack it."""
    src = r.get("silicon_data_source")
    day = src.split("measured=", 1)[1][:10] if isinstance(src, str) and "measured=" in src else ""
    return str(r["backend"]), str(r["backend_version"]), day


def mtp_draft(r: dict, arch) -> dict | None:
    """The speculative_config a row ran with (None: none known): MTP for the campaigns above, on a
    model that ships MTP layers."""
    if campaign(r) in MTP_CAMPAIGNS and arch.num_nextn_predict_layers > 0:
        return {**MTP_DRAFT, "acceptance": dict(MTP_DRAFT["acceptance"])}
    return None
