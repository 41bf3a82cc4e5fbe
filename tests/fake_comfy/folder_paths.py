import os
import tempfile

base_path = tempfile.mkdtemp(prefix="fake_comfy_")
models_dir = os.path.join(base_path, "models")
output_directory = os.path.join(base_path, "output")
input_directory = os.path.join(base_path, "input")
folder_names_and_paths = {"checkpoints": ([os.path.join(models_dir, "checkpoints")], {".safetensors"})}


def get_folder_paths(name):
    return list(folder_names_and_paths[name][0])


def get_filename_list(name):
    paths, exts = folder_names_and_paths[name]
    out = []
    for p in paths:
        if os.path.isdir(p):
            out += sorted(f for f in os.listdir(p) if os.path.splitext(f)[1] in exts)
    return out


def get_full_path(name, filename):
    for p in folder_names_and_paths[name][0]:
        full = os.path.join(p, filename)
        if os.path.isfile(full):
            return full
    return None


def get_output_directory():
    return output_directory


def get_input_directory():
    return input_directory
