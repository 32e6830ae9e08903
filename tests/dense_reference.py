"""Dense references for the sparse convolutions: scatter sparse sites into a dense volume, read them back,
and lay out our [k^3, Cin, Cout] x-fastest weights as torch conv3d / conv_transpose3d weights."""
import torch


def densify(coords, feats, batch, side) -> torch.Tensor:
    """(B, C, side, side, side) volume, zeros at inactive sites; spatial dims in x, y, z order."""
    vol = feats.new_zeros(batch, feats.shape[1], side, side, side)
    b, x, y, z = coords.unbind(1)
    vol[b, :, x, y, z] = feats
    return vol


def read(vol, coords) -> torch.Tensor:
    """Rows of `vol` (B, C, ...) at coords (M,4) [b,x,y,z] -> (M, C)."""
    b, x, y, z = coords.unbind(1)
    return vol[b, :, x, y, z]


def dense_weight(w, k, transpose=False) -> torch.Tensor:
    """[k^3, Cin, Cout] x-fastest -> conv3d (Cout, Cin, dx, dy, dz), or conv_transpose3d (Cin, Cout, dx, dy, dz)."""
    w = w.reshape(k, k, k, w.shape[1], w.shape[2])  # [dz, dy, dx, Cin, Cout]
    return w.permute(3, 4, 2, 1, 0) if transpose else w.permute(4, 3, 2, 1, 0)
