"""Where the pack's nodes appear in ComfyUI's node library: one root, three sub-categories."""

ROOT = "FollowYourEmoji"
LANDMARKS = ROOT + "/landmarks"  # faces found, aligned, edited
SAMPLING = ROOT + "/sampling"    # the networks: loaders, reference encoding, samplers
COMPOSE = ROOT + "/compose"      # crop, paste back, the finished video
