"""The /imagine option rules (pure): defaults, ranges, tags resolved to files, the ``hypernet`` option's tag."""

from __future__ import annotations

import pytest

from bot.advanced_options import AdvancedOptions
from bot.config import LimitSettings
from bot.options import SAMPLER_NAMES, OptionError, build_settings, embedding_hints, size_choices, step_multiplier
from bot.store import Hypernet
from engine.render_settings import HypernetRef

LIMITS = LimitSettings(max_size=768, max_steps=50)


def row(name: str, sha: str, default_multiplier: float = 1.0) -> Hypernet:
    return Hypernet(id=1, name=name, guild_id=None, sha256=sha, file_name=f"{sha}.safetensors", file_size=1,
                    sizes=(320,), layer_structure=(1.0, 2.0, 1.0), activation="relu", base_model=None, description="",
                    trigger_words="", default_multiplier=default_multiplier, preview_path=None, enabled=True,
                    added_by=None, added_at=0.0, source="folder", source_detail=None, updated_at=0.0)


MODELS = {"foo": row("foo", "f" * 64, 0.6), "bar": row("bar", "b" * 64)}


def settings(**options: object):
    return build_settings(limits=LIMITS, checkpoint="tiny", models=MODELS, **{"prompt": "a cat", **options})


def test_bot_sampler_names_are_known_to_the_engine() -> None:
    from engine.samplers import SAMPLER_NAMES as ENGINE_NAMES

    assert set(SAMPLER_NAMES) <= set(ENGINE_NAMES) and len(SAMPLER_NAMES) <= 25


def test_size_choices_follow_the_limits() -> None:
    assert size_choices(LIMITS)[0] == "512x512"
    assert "1024x1024" not in size_choices(LIMITS) and "768x512" in size_choices(LIMITS)


def test_defaults_tags_and_the_hypernet_option() -> None:
    s = settings(prompt="  a cat hypernet:foo:0.5, red ", hypernet="bar", multiplier=1.25, seed=3)
    assert s.prompt == "a cat hypernet:foo:0.5, red <hypernet:bar:1.25>"  # as typed; the option's tag appended
    assert s.hypernets == (HypernetRef("foo", "f" * 64, 0.5), HypernetRef("bar", "b" * 64, 1.25))
    assert (s.steps, s.width, s.height, s.seed, s.sampler, s.count, s.checkpoint) == (20, 512, 512, 3, "Euler a", 1,
                                                                                       "tiny")
    assert s.encoder_prompt.split() == ["a", "cat", ",", "red"]
    assert s.infotext_prompt == "a cat <hypernet:foo:0.5>, red <hypernet:bar:1.25>"


def test_the_option_without_a_multiplier_takes_the_models_default() -> None:
    assert settings(hypernet="foo").hypernets == (HypernetRef("foo", "f" * 64, 0.6),)


def test_random_seed_when_none_or_negative() -> None:
    seeds = {settings(seed=-1).seed for _ in range(5)} | {settings().seed for _ in range(5)}
    assert all(0 <= s < 2**32 for s in seeds) and len(seeds) > 1


@pytest.mark.parametrize(("options", "message"), [
    ({"cfg_scale": 31.0}, "CFG scale must be between 1 and 30; you gave 31."),
    ({"size": "big"}, "Size `big` is not of the form WIDTHxHEIGHT, e.g. `512x512`."),
    ({"seed": 2**40}, "Seed must be between 0 and 4294967295 (or -1 for a random one); you gave 1099511627776."),
    ({"sampler": "Nope"}, "Unknown sampler `Nope`; choose one of: "),
    ({"hypernet": "foo", "multiplier": float("nan")}, "The multiplier for `foo` must be between -1 and 2; you gave nan."),
    ({"multiplier": 0.5}, "`multiplier` needs `hypernet` too: pick a hypernetwork"),
    ({"hypernet": "two words"}, "`two words` cannot be a hypernetwork name (model names cannot contain spaces"),
    ({"hypernet": "nope"}, "`<hypernet:nope:1>` — there is no hypernet named `nope`; `/hypernets list` shows the "
                           "installed ones."),
    ({"prompt": "a cat <hypernet:Foo:5>"}, "`<hypernet:Foo:5>` — multiplier 5 is outside the allowed range -1 to 2."),
    ({"prompt": "a cat <hypernet:Foo>"}, "`<hypernet:Foo>` — there is no hypernet named `Foo` (names are "
                                         "case-sensitive); did you mean `foo`?"),
    ({"width": 100}, "Width must be a multiple of 8 (e.g. 96); you gave 100."),
])
def test_refusals_say_what_to_do(options: dict[str, object], message: str) -> None:
    with pytest.raises(OptionError) as info:
        settings(**options)
    assert str(info.value).startswith(message), str(info.value)


def test_multiplier_steps_clamp_and_stop_at_bounds() -> None:
    assert step_multiplier(0.7, 1, LIMITS) == 0.8
    assert step_multiplier(1.95, 1, LIMITS) == 2.0
    assert step_multiplier(2.0, 1, LIMITS) is None and step_multiplier(-1.0, -1, LIMITS) is None


# ---- A1111's advanced settings ------------------------------------------------------------------------------------


def test_any_a1111_sampler_name_in_any_case_is_accepted_in_its_spelling() -> None:
    assert settings(sampler="dpm++ 2m sde karras").sampler == "DPM++ 2M SDE Karras"
    with pytest.raises(OptionError, match=r"^A1111's sampler `DPM fast` is not supported here; choose one of: Euler a"):
        settings(sampler="DPM fast")


def test_advanced_defaults_are_a1111s() -> None:
    s = settings()
    assert (s.schedule, s.clip_skip, s.rng, s.eta_noise_seed_delta, s.subseed, s.subseed_strength,
            s.seed_resize_from) == ("Automatic", 1, "GPU", 0, None, 0.0, None)


def test_advanced_options_reach_the_settings() -> None:
    s = settings(advanced=AdvancedOptions(schedule="karras", clip_skip=2, variation_seed=7, variation_strength=0.35,
                                          seed_resize_from="512x768", ensd=31337, rng="nv"))
    assert (s.schedule, s.clip_skip, s.subseed, s.subseed_strength, s.seed_resize_from, s.eta_noise_seed_delta,
            s.rng) == ("Karras", 2, 7, 0.35, (512, 768), 31337, "NV")


def test_a_variation_strength_without_a_seed_draws_one_and_0x0_means_no_resize() -> None:
    s = settings(advanced=AdvancedOptions(variation_strength=0.5, seed_resize_from="0x0"))
    assert s.subseed is not None and 0 <= s.subseed < 2**32 and s.seed_resize_from is None


@pytest.mark.parametrize(("advanced", "message"), [
    (AdvancedOptions(schedule="Simple"), "Unknown schedule type `Simple`; choose one of: Automatic, Uniform, Karras"),
    (AdvancedOptions(clip_skip=13), "Clip skip must be between 1 and 12 (2 for most anime checkpoints); you gave 13."),
    (AdvancedOptions(variation_strength=1.5), "Variation strength must be between 0 and 1; you gave 1.5."),
    (AdvancedOptions(variation_seed=2**32), "The variation seed must be between 0 and 4294967295"),
    (AdvancedOptions(seed_resize_from="512 by 512"), "Seed resize `512 by 512` is not of the form WIDTHxHEIGHT"),
    (AdvancedOptions(seed_resize_from="500x512"), "Seed resize sides must be multiples of 8 between 8 and 2048"),
    (AdvancedOptions(ensd=-1), "ENSD must be between 0 and 4294967295 (31337 is the usual one); you gave -1."),
    (AdvancedOptions(rng="XPU"), "Unknown noise source `XPU`; choose one of: GPU, NV, CPU (GPU is A1111's default)."),
])
def test_advanced_refusals_say_what_to_do(advanced: AdvancedOptions, message: str) -> None:
    with pytest.raises(OptionError) as info:
        settings(advanced=advanced)
    assert str(info.value).startswith(message), str(info.value)


# ---- LoRA tags ----------------------------------------------------------------------------------------------------


LORAS = {"inkLines": row("inkLines", "1" * 64), "glow": row("glow", "2" * 64)}


def test_lora_tags_resolve_to_their_files_with_a1111s_numbers() -> None:
    s = settings(prompt="a cat <lora:inkLines:0.3:1.2> <hypernet:foo:0.5> <lyco:glow>", loras=LORAS)
    assert [(x.name, x.sha256, x.te, x.unet, x.dyn) for x in s.loras] == [
        ("inkLines", "1" * 64, 0.3, 1.2, None), ("glow", "2" * 64, 1.0, 1.0, None)]
    assert s.hypernets == (HypernetRef("foo", "f" * 64, 0.5),)
    assert s.encoder_prompt.split() == ["a", "cat"]


@pytest.mark.parametrize(("prompt", "message"), [
    ("a <lora:inklines:1>", "`<lora:inklines:1>` — there is no LoRA named `inklines` (names are case-sensitive); "
                            "did you mean `inkLines`?"),
    ("a <lora:glow:5>", "`<lora:glow:5>` — multiplier 5 is outside the allowed range -1 to 2."),
    ("a <lora:glow:bright>", "`<lora:glow:bright>` — multiplier `bright` is not a number."),
])
def test_lora_refusals_say_what_to_do(prompt: str, message: str) -> None:
    with pytest.raises(OptionError) as info:
        settings(prompt=prompt, loras=LORAS)
    assert str(info.value) == message


def test_with_no_loras_installed_the_tag_says_so() -> None:
    with pytest.raises(OptionError, match=r"no LoRAs are installed yet; `/loras list` shows what is available"):
        settings(prompt="a <lora:glow:1>")


# ---- embeddings ---------------------------------------------------------------------------------------------------


EMBEDDINGS = {"EasyNegative": row("EasyNegative", "3" * 64), "inkStyle": row("inkStyle", "4" * 64)}


def test_embeddings_named_in_either_prompt_go_with_the_job() -> None:
    s = settings(prompt="a cat, inkstyle", negative_prompt="(easynegative:1.2)", embeddings=EMBEDDINGS)
    assert [(e.name, e.sha256) for e in s.embeddings] == [("EasyNegative", "3" * 64), ("inkStyle", "4" * 64)]
    assert settings(prompt="a cat", embeddings=EMBEDDINGS).embeddings == ()


def test_a_word_one_edit_from_an_embedding_gets_a_hint() -> None:
    assert embedding_hints("a cat, EasyNegativ, inkStyle", EMBEDDINGS) == (
        "`EasyNegativ` is not an installed embedding; did you mean `EasyNegative`?",)
    assert embedding_hints("a lighthouse at dusk", EMBEDDINGS) == ()
