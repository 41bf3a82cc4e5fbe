import torch

calls = []
interrupted = False


class InterruptProcessingException(Exception):
    pass


def get_torch_device():
    return torch.device("cpu")


def unet_offload_device():
    return torch.device("cpu")


def should_use_fp16(device=None, **kw):
    return False


def should_use_bf16(device=None, **kw):
    return False


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False):
    calls.append(("load_models_gpu", len(models), force_full_load, memory_required))


def soft_empty_cache(force=False):
    calls.append(("soft_empty_cache",))


def throw_exception_if_processing_interrupted():
    global interrupted
    if interrupted:
        interrupted = False
        raise InterruptProcessingException()
