"""The E2 and E5 evidence lines follow the numbers they are given."""
from memjax.experiments import csr, sensitivity


def test_csr_evidence_follows_the_data():
    summary = {"real": {"csr_last_epoch": 0.01}, "randY": {"csr_last_epoch": 0.1}}
    (line,) = csr.evidence(summary)
    assert line["claim"] == 1 and line["supports"] and "0.100 for randY" in line["text"]
    summary["randY"]["csr_last_epoch"] = 0.005
    assert not csr.evidence(summary)[0]["supports"]
    assert csr.evidence({"randX": {"csr_last_epoch": 0.1}}) == []


def test_sensitivity_evidence_follows_the_data():
    summary = {"real": {"gini_gbar_final": 0.47}, "randX": {"gini_gbar_final": 0.15}}
    (line,) = sensitivity.evidence(summary)
    assert line["supports"] and "0.470 on real data against 0.150 on randX" in line["text"]
    summary["randX"]["gini_gbar_final"] = 0.6
    assert not sensitivity.evidence(summary)[0]["supports"]
