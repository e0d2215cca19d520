"""Real DICOM files for tests, built with pydicom: one writer for the processor and loader tests."""

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid


def make_dicom(pixels, photometric="MONOCHROME2", bits_stored=12, signed=False, **elements):
    """A DX DICOM dataset (explicit VR little endian) around `pixels` (uint16/int16 (H, W)); `elements` set or
    override data elements by keyword (e.g. ``WindowCenter=...``, ``PatientID=...``)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("fixture.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.asarray(pixels).astype("<i2" if signed else "<u2").tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def save_dicom(ds, path):
    ds.save_as(path, enforce_file_format=True)
    return path
