"""The synthetic road world: built-in training data, drive logs and ground truth (docs/synthetic.md).

- :mod:`.world`: the road (straights and arcs, cross-section, median with gaps), its terrain, and what stands beside it;
- :mod:`.camera`: camera rigs (KITTI's calibration and variants);
- :mod:`.drive`: the ego car's poses and OXTS packets;
- :mod:`.multidrive`: one world driven several times (lanes, directions, light) and edited between drives;
- :mod:`.render`: RGB frame and label mask with a z-buffer;
- :mod:`.writers` (``make_all``): the data set (:mod:`.dataset`), KITTI-raw drive logs (:mod:`.logs`), their
  GeoJSON ground truth (:mod:`.truth`), contact sheets (:mod:`.sheet`); settings, seeds and plumbing in :mod:`.base`.
"""

from hdmap_seg.synthetic.base import SynthConfig
from hdmap_seg.synthetic.camera import CameraRig, kitti_rig, rig_by_name, wide1024_rig
from hdmap_seg.synthetic.dataset import write_dataset
from hdmap_seg.synthetic.drive import Drive, PoseNoise, make_drive, oxts_packets, pose_on_road
from hdmap_seg.synthetic.logs import write_drive_log
from hdmap_seg.synthetic.render import Frame, Renderer
from hdmap_seg.synthetic.world import Terrain, World, make_world
from hdmap_seg.synthetic.writers import make_all

__all__ = [
    "CameraRig",
    "Drive",
    "Frame",
    "PoseNoise",
    "Renderer",
    "SynthConfig",
    "Terrain",
    "World",
    "kitti_rig",
    "make_all",
    "make_drive",
    "make_world",
    "oxts_packets",
    "pose_on_road",
    "rig_by_name",
    "wide1024_rig",
    "write_dataset",
    "write_drive_log",
]
