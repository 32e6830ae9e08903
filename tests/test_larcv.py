"""larcv2 ROOT reader: the real 5-event sample, our cluster3d_mcst decoder, files built for the
trailing voxel set, and malformed files."""
import awkward as ak
import numpy as np
import pytest
import uproot

from spice.data import PILARNET_FIVETYPES, DataError, read_larcv_root
from spice.data.larcv import LarcvReader, decode_voxel_sets, instance_of

VOXELS = [3827, 1671, 4061, 13672, 4151]
LABELS = {"HIP": 3686, "MIP": 4685, "Shower": 18230, "Delta": 781, "Michel": 0}


def test_real_file_counts(real_root_file):
    events = read_larcv_root(real_root_file)
    assert [len(e) for e in events] == VOXELS
    sem = np.concatenate([e.semantic for e in events])
    assert dict(zip(PILARNET_FIVETYPES, np.bincount(sem, minlength=5).tolist())) == LABELS
    for i, e in enumerate(events):
        assert e.spatial_size == 192 and e.labels == PILARNET_FIVETYPES
        assert e.source == (str(real_root_file), i)
        assert e.coords.dtype == np.int64 and e.energy.dtype == np.float32
        assert e.coords.min() >= 0 and e.coords.max() < 192
        assert 0.005 < e.energy.min() and e.energy.max() < 6.0  # SPEC: 0.01-5.5 MeV
        assert (e.instance >= 0).all()  # every voxel of this sample lies in some particle's set


def test_coords_match_voxel_ids_from_uproot(real_root_file):
    ids = uproot.open(real_root_file)["sparse3d_data_tree"][
        "sparse3d_data_branch/larcv::SparseTensor3D/larcv::VoxelSet/_voxel_v/_voxel_v._id"].array(library="np")
    for e, i in zip(read_larcv_root(real_root_file), ids):
        x, y, z = e.coords.T
        assert np.array_equal(x + 192 * y + 192 * 192 * z, i.astype(np.int64))


def test_decoded_set_sizes_match_particle_num_voxels(real_root_file):
    """Independent check of the byte decoder: particle_mcst records each particle's voxel count."""
    tree = uproot.open(real_root_file)["particle_mcst_tree"]
    num_voxels = tree["particle_mcst_branch/larcv::ParticleSet/_part_v/_part_v._num_voxels"].array(library="np")
    reader = LarcvReader(real_root_file)
    raw = reader._cluster_bytes(0, len(reader))
    for e in range(len(reader)):
        sets = decode_voxel_sets(raw[e], len(num_voxels[e]) + 1, real_root_file, e)  # + trailing set
        assert [len(s) for s in sets[:-1]] == num_voxels[e].tolist()


def test_lazy_entry_equals_full_read(real_root_file):
    events = read_larcv_root(real_root_file)
    reader = LarcvReader(real_root_file)
    assert len(reader) == 5 and reader.counts().tolist() == VOXELS
    for i in (3, 0, 4):
        assert reader.read(i).equals(events[i])


def _encode_sets(sets):
    """Independent encoder of SPEC §6's byte layout (header, then int32 n, n*uint64, n*float32)."""
    body = b"".join(np.array([len(s)], ">i4").tobytes() + np.asarray(s, ">u8").tobytes()
                    + np.ones(len(s), ">f4").tobytes() for s in sets)
    header = (0x40000000 | (len(body) + 8)).to_bytes(4, "big") + b"\x40\x09\x00\x00" + b"\x12\x34\x56\x78"
    return header + body


def test_decoder_on_hand_made_bytes():
    sets = [[5, 7, 9], [], [7, 100]]
    out = decode_voxel_sets(_encode_sets(sets), 3)
    assert [s.tolist() for s in out] == sets
    with pytest.raises(DataError, match="undecoded bytes"):
        decode_voxel_sets(_encode_sets(sets), 2, "f.root", 4)
    with pytest.raises(DataError, match="f.root, entry 4"):
        decode_voxel_sets(_encode_sets(sets)[:-3], 3, "f.root", 4)


def test_instance_lowest_set_wins_and_unassigned():
    ids = np.array([7, 5, 100, 42, 9])
    sets = [np.array([5, 7, 9]), np.array([]), np.array([7, 100, 1000])]  # 7 overlaps; 1000 not in image
    assert instance_of(ids, sets).tolist() == [0, 0, 2, -1, 0]


def test_not_a_root_file(tmp_path):
    p = tmp_path / "x.root"
    p.write_bytes(b"this is not ROOT" * 10)
    with pytest.raises(DataError, match="not a ROOT file") as e:
        read_larcv_root(p)
    assert str(p) in str(e.value)


def test_truncated_root_file(tmp_path, real_root_file):
    p = tmp_path / "cut.root"
    p.write_bytes(real_root_file.read_bytes()[:200_000])
    with pytest.raises(DataError, match="truncated ROOT file: 200000 bytes on disk, its header says 511936"):
        read_larcv_root(p)


def test_missing_product(tmp_path):
    p = tmp_path / "other.root"
    with uproot.recreate(p) as f:
        f["sparse3d_data_tree"] = {"x": np.arange(3)}
    with pytest.raises(DataError, match="missing products.*cluster3d_mcst"):
        read_larcv_root(p)


def test_fivetypes_ids_must_match(real_root_file):
    reader = LarcvReader(real_root_file)
    ids = np.array([1, 2, 3], dtype=np.uint64)
    with pytest.raises(DataError, match="entry 2: sparse3d_fivetypes voxel ids differ"):
        reader._event(2, ids, np.ones(3, np.float32), ids[::-1], np.zeros(3), 0, _encode_sets([]), 192, 0)


def test_bad_labels_and_grid(real_root_file):
    reader = LarcvReader(real_root_file)
    ids = np.array([1, 2, 3], dtype=np.uint64)
    with pytest.raises(DataError, match="unknown semantic labels \\[7\\]"):
        reader._event(1, ids, np.ones(3, np.float32), ids, np.array([0, 7, 1.0]), 0, _encode_sets([]), 192, 0)
    with pytest.raises(DataError, match="outside the 192\\^3 grid"):
        reader._event(1, ids * 10**7, np.ones(3, np.float32), ids * 10**7, np.zeros(3), 0, _encode_sets([]), 192, 0)
    with pytest.raises(DataError, match="NaN or infinite"):
        reader._event(1, ids, np.array([1, np.nan, 1], np.float32), ids, np.zeros(3), 0, _encode_sets([]), 192, 0)


def write_larcv(path, entries, grid=16):
    """A larcv2-shaped ROOT file written with uproot: the branches LarcvReader reads, under their larcv
    names. entries: dicts with ids, labels (per image voxel), sets (voxel id lists, particle sets then
    an optional trailing set) and n_particles. cluster3d_mcst's bytes follow SPEC §6 (_encode_sets)."""
    tensor, sets_ = "larcv::SparseTensor3D/", "larcv::ClusterVoxel3D/larcv::VoxelSetArray/_voxel_vv/_voxel_vv."
    voxels = tensor + "larcv::VoxelSet/_voxel_v/_voxel_v."
    n = len(entries)

    def tree(f, name, branches):  # mktree: a TTree (assigning a dict of awkward arrays writes an RNTuple)
        f.mktree(name, {k: v.type if isinstance(v, ak.Array) else v.dtype for k, v in branches.items()})
        f[name].extend(branches)

    with uproot.recreate(path) as f:
        for product, values in (("sparse3d_data", [[1.0] * len(e["ids"]) for e in entries]),
                                ("sparse3d_fivetypes", [e["labels"] for e in entries])):
            ids = ak.values_astype(ak.Array([e["ids"] for e in entries]), np.uint64)
            branches = {f"{product}_branch/{voxels}_id": ids,
                        f"{product}_branch/{voxels}_value": ak.values_astype(ak.Array(values), np.float32)}
            branches.update({f"{product}_branch/{tensor}_meta._{a}num": np.full(n, grid, np.uint64) for a in "xyz"})
            tree(f, f"{product}_tree", branches)
        tree(f, "cluster3d_mcst_tree", {
            f"cluster3d_mcst_branch/{sets_}_id": ak.Array([list(range(len(e["sets"]))) for e in entries]),
            f"cluster3d_mcst_branch/{sets_}_voxel_v": ak.values_astype(ak.Array(
                [np.frombuffer(_encode_sets(e["sets"]), np.uint8) for e in entries]), np.uint8)})
        tree(f, "particle_mcst_tree", {"particle_mcst_branch/larcv::ParticleSet/_part_v/_part_v._id":
                                       ak.Array([list(range(e["n_particles"])) for e in entries])})
    return path


def test_trailing_set_is_no_particle(tmp_path):
    """SPEC §6: the set past the last particle holds deposits tied to no particle: instance -1 for a
    voxel only it holds (or that no set holds); a voxel it shares with a particle keeps the particle."""
    entries = [
        # two particles (sets 0, 1) and the trailing set 2; voxel 9 only trailing, 4 trailing + particle 1,
        # 7 in no set; 100 (in set 0) is not in the image
        {"ids": [1, 2, 3, 4, 9, 7], "labels": [0, 0, 1, 1, 2, 2],
         "sets": [[1, 2, 100], [3, 4], [9, 4]], "n_particles": 2},
        # one particle and no trailing set: every set is a particle
        {"ids": [5, 6], "labels": [2, 2], "sets": [[5, 6]], "n_particles": 1},
        # no particle at all: the only set is the trailing one
        {"ids": [8, 10], "labels": [3, 3], "sets": [[8, 10]], "n_particles": 0},
    ]
    path = write_larcv(tmp_path / "trailing.root", entries)
    events = read_larcv_root(path)
    assert [e.instance.tolist() for e in events] == [[0, 0, 1, 1, -1, -1], [0, 0], [-1, -1]]
    assert events[0].coords[4].tolist() == [9, 0, 0] and events[0].semantic.tolist() == [0, 0, 1, 1, 2, 2]
    assert LarcvReader(path).read(2).instance.tolist() == [-1, -1]


def test_set_count_must_match_particles(tmp_path):
    entries = [{"ids": [1], "labels": [0], "sets": [[1]], "n_particles": 0},
               {"ids": [1], "labels": [0], "sets": [[1], [1], [1]], "n_particles": 1}]
    path = write_larcv(tmp_path / "bad.root", entries)
    reader = LarcvReader(path)
    assert reader.read(0).instance.tolist() == [-1]
    with pytest.raises(DataError, match="entry 1: cluster3d_mcst has 3 voxel sets for 1 particle_mcst entries"):
        reader.read(1)
