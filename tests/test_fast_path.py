"""The speed paths compute what the plain path computes.

--compile: the Inductor-compiled losses give the same losses and gradients as eager, and a few whole
updates leave the same weights. Inductor's random numbers normally come from its own generator, so
these tests make it call torch's (fallback_random): then the compiled and eager paths draw the same
noise and must agree to float rounding. Compiling on the CPU takes a while on a small machine (about
half a minute here), so one module-scoped pair of agents serves all cases.

--cudagraphs: CUDA only. Off CUDA it is refused (tests/test_cli.py); on a machine with CUDA the last
test here compares graphed updates with eager ones.
"""

import copy
import os
import shutil

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config
from test_losses import ACT_DIM, make_agent, make_batch

import sac_continuous as sac

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(rtol=1e-5, atol=1e-6)


def tensors(batch, device="cpu"):
    obs, act, rew, term, next_obs = (torch.as_tensor(np.asarray(x, np.float32), device=device) for x in batch)
    return obs, act, rew[:, None], term[:, None], next_obs


@pytest.fixture(scope="module")
def pair():
    """(eager, compiled) agents with the same weights; the compiled one compiled on first use."""
    compiler = os.environ.get("CXX", "g++")  # what Inductor builds its CPU kernels with
    if shutil.which(compiler) is None:
        pytest.skip(f"--compile on the CPU needs a C++ compiler ({compiler} not found); .ci/run installs g++")
    with inductor_config.patch(fallback_random=True):
        yield make_agent(), make_agent(compile=True)


def test_compile_flag_compiles_the_losses(pair):
    """Dynamo really captured the losses, each as whole graphs: a silent fall-back to eager (or a graph
    break splitting a loss) would still give equal results in the tests below."""
    from torch._dynamo.utils import counters

    eager, compiled = pair
    assert not hasattr(eager.critic_loss, "_torchdynamo_orig_callable")
    batch = tensors(make_batch())
    with inductor_config.patch(fallback_random=True):
        compiled.critic_loss(*batch)  # compiles on the first call (if no other test here called it yet)
        compiled.actor_loss(batch[0])
    assert counters["stats"]["unique_graphs"] >= 2, dict(counters["stats"])  # at least one per loss
    assert not counters["graph_break"], dict(counters["graph_break"])


def backward_grads(loss, params):
    """Gradients as the optimizer step sees them: loss.backward() into .grad (set to None first)."""
    for p in params:
        p.grad = None
    loss.backward()
    return [p.grad for p in params]


def grads(loss, params):
    return torch.autograd.grad(loss, params)


def test_compiled_critic_loss_and_gradients_equal_eager(pair):
    eager, compiled = pair
    batch = tensors(make_batch())
    out = {}
    with inductor_config.patch(fallback_random=True):
        for name, agent in (("eager", eager), ("compiled", compiled)):
            torch.manual_seed(7)
            loss, stats = agent.critic_loss(*batch)
            out[name] = (loss, stats, grads(loss, agent.q_params))
    (loss_e, stats_e, g_e), (loss_c, stats_c, g_c) = out["eager"], out["compiled"]
    torch.testing.assert_close(loss_c, loss_e, **TOL)
    for k in stats_e:
        torch.testing.assert_close(stats_c[k], stats_e[k], **TOL)
    assert len(g_c) == len(g_e) == 12
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, **TOL)
    assert any(bool(g.abs().sum() > 0) for g in g_e)  # not trivially equal


def test_compiled_actor_loss_and_gradients_equal_eager(pair):
    eager, compiled = pair
    obs = tensors(make_batch(seed=1))[0]
    out = {}
    with inductor_config.patch(fallback_random=True):
        for name, agent in (("eager", eager), ("compiled", compiled)):
            torch.manual_seed(8)
            for p in agent.q_params:
                p.grad = None
            loss, log_pi = agent.actor_loss(obs)
            out[name] = (loss, log_pi.detach(), backward_grads(loss, list(agent.actor.parameters())))
    (loss_e, logp_e, g_e), (loss_c, logp_c, g_c) = out["eager"], out["compiled"]
    torch.testing.assert_close(loss_c, loss_e, **TOL)
    torch.testing.assert_close(logp_c, logp_e, **TOL)
    for a, b in zip(g_c, g_e):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, **TOL)
    # a real backward(), which would fill the critics' .grad: dQ/da only, eager and compiled
    assert all(p.grad is None for p in [*eager.q_params, *compiled.q_params])


def test_compiled_updates_leave_the_same_weights(pair):
    """Three full updates (critic, actor, alpha, Polyak) from equal states: equal states after."""
    eager, compiled = copy.deepcopy(pair[0]), pair[1]
    with torch.no_grad():  # start from the eager agent's exact state
        for k, m in compiled.modules().items():
            m.load_state_dict(eager.modules()[k].state_dict())
        compiled.log_alpha.copy_(eager.log_alpha)
        compiled.alpha.copy_(eager.alpha)
    for k, o in compiled.optimizers().items():
        o.load_state_dict(eager.optimizers()[k].state_dict())
    with inductor_config.patch(fallback_random=True):
        for i in range(3):
            batch = make_batch(seed=10 + i)
            torch.manual_seed(100 + i)
            stats_e = eager.update(batch)
            torch.manual_seed(100 + i)
            stats_c = compiled.update(batch)
            for k in stats_e:
                torch.testing.assert_close(stats_c[k], stats_e[k], **TOL)
    for k, m in eager.modules().items():
        for (name, a), b in zip(m.state_dict().items(), compiled.modules()[k].state_dict().values()):
            torch.testing.assert_close(b, a, **TOL, msg=f"{k}.{name}")
    torch.testing.assert_close(compiled.log_alpha, eager.log_alpha, **TOL)
    assert not torch.equal(eager.actor.mean.weight, pair[0].actor.mean.weight)  # the updates did move it


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_cuda_graph_updates_equal_eager_updates(compile):
    """Graphed steps (3 warm-up calls, the capture, then replays) against eager steps on the same
    batches with the same CUDA random stream: same losses, same weights, within float tolerance."""
    with inductor_config.patch(fallback_random=True):
        eager, graphed = make_agent("cuda"), make_agent("cuda", cudagraphs=True, compile=compile)
        for agent in (eager, graphed):
            torch.cuda.manual_seed(3)
            losses = []
            for i in range(8):  # past the warm-up and the capture: replays
                stats = agent.update(make_batch(seed=i))
                losses.append({k: v.item() for k, v in stats.items()})
            agent.losses = losses
            agent.action = agent.act(make_batch(seed=99)[0][:1])
    for le, lg in zip(eager.losses, graphed.losses):
        assert le.keys() == lg.keys()
        for k in le:
            assert lg[k] == pytest.approx(le[k], rel=1e-4, abs=1e-5), k
    for k, m in eager.modules().items():
        for (name, a), b in zip(m.state_dict().items(), graphed.modules()[k].state_dict().values()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=f"{k}.{name}")
    torch.testing.assert_close(graphed.log_alpha, eager.log_alpha, rtol=1e-4, atol=1e-6)
    assert graphed.action.shape == eager.action.shape == (1, ACT_DIM)


def test_compile_on_cuda_without_triton_or_a_c_compiler_is_refused(monkeypatch):
    """Checked before anything runs (the device need not exist: only the checks are called)."""
    import importlib.util
    import shutil

    cuda = torch.device("cuda")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real_find_spec(name, *a)
    )
    with pytest.raises(sac.UserError, match="triton"):
        sac.check_fast_path(sac.Args(compile=True), cuda)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "triton" else real_find_spec(name, *a)
    )
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(sac.UserError, match="C compiler"):
        sac.check_fast_path(sac.Args(compile=True), cuda)
    sac.check_fast_path(sac.Args(), cuda)  # without --compile nothing is needed
    monkeypatch.setenv("CC", "gcc")
    sac.check_fast_path(sac.Args(compile=True), cuda)
