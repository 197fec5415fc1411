"""Teacher policies over one set of base weights: adapter off, frozen snapshot, EMA."""

import copy

import pytest
import torch

from engrain.engine.context import teacher_for
from engrain.registry import TEACHERS
from engrain.engine.teacher import TEACHER, snapshot_student
from engrain.spec.schema import Train


def make_teacher(kind, **settings):
    return teacher_for(Train(teacher={"kind": kind, **settings}))


@pytest.fixture
def peft_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    model = get_peft_model(copy.deepcopy(tiny_model), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():   # a non-zero student, so adapter on/off differ
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model


def logits(model, ids=torch.tensor([[5, 6, 7, 8]])):
    with torch.no_grad():
        return model(ids).logits


def test_fixed_teacher_is_the_base_model(peft_model, tiny_model):
    teacher = make_teacher("fixed")
    with teacher.scoring(peft_model):
        torch.testing.assert_close(logits(peft_model), logits(tiny_model))
    assert not torch.allclose(logits(peft_model), logits(tiny_model))


def test_continuation_snapshot_is_frozen_and_student_stays_trainable(peft_model, tiny_model):
    teacher = make_teacher("continuation", refresh_after=2)
    teacher.after_step(peft_model, 1)
    assert teacher.version == 0
    teacher.after_step(peft_model, 2)
    assert teacher.version == 1
    snap = logits(peft_model)
    with torch.no_grad():   # the student moves on
        for n, p in peft_model.named_parameters():
            if "lora_B" in n and ".default." in n:
                p.add_(1.0)
    with teacher.scoring(peft_model):
        torch.testing.assert_close(logits(peft_model), snap)
    assert not torch.allclose(logits(peft_model), snap)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    assert not any(f".{TEACHER}." in n for n in trainable)


def test_ema_teacher_moves_toward_the_student(peft_model):
    teacher = make_teacher("ema", ema_decay=0.5)
    teacher.after_step(peft_model, 1)           # starts equal to the student
    params = dict(peft_model.named_parameters())
    name = next(n for n in params if "lora_B" in n and ".default." in n)
    t_name = name.replace(".default.", f".{TEACHER}.")
    before = params[t_name].detach().clone()
    with torch.no_grad():
        params[name].add_(2.0)
    teacher.after_step(peft_model, 2)
    torch.testing.assert_close(params[t_name].detach(), before + 1.0)   # 0.5*old + 0.5*(old+2)


def test_unknown_kind_and_missing_refresh_are_clear():
    with pytest.raises(ValueError, match="refresh_after"):
        make_teacher("continuation")
    with pytest.raises(ValueError, match="unknown teacher 'sometimes'"):
        make_teacher("sometimes")
    problems = TEACHERS.get("continuation").check(Train(teacher={"kind": "continuation"}))
    assert [loc for loc, _, _ in problems] == [("train", "teacher")]
    assert "refresh_after" in problems[0][2]
    assert TEACHERS.get("continuation").check(Train(teacher={"kind": "continuation", "refresh_after": 5})) == []


def test_snapshot_twice_overwrites(peft_model):
    snapshot_student(peft_model)
    snapshot_student(peft_model)
    assert TEACHER in peft_model.peft_config
