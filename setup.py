"""Packages the pipeline code so Beam workers and Kubeflow images can import it by module path."""
from setuptools import find_packages, setup

setup(
    name="unet3plus-tfx",
    version="0.1.0",
    description="TFX pipeline for UNet 3+ liver and liver-tumour segmentation from CT (LiTS layout)",
    python_requires=">=3.9,<3.11",
    packages=find_packages(include=["common*", "pipeline*", "components*", "evaluation*",
                                    "inference*", "preprocessing*", "trainer*",
                                    "models*", "schema*"]),
    py_modules=["local_runner", "kubeflow_runner", "predict"],
    package_data={"schema": ["*.pbtxt"]},
    # The exact pins live in requirements/lock.txt; these are the direct needs.
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "keras==3.12.4",
        "nibabel>=5.2",
        "numpy<2",
        "scipy",
        "connected-components-3d",   # 3-D post-processing (inference/postprocess.py; scipy fallback)
        "tqdm",
        "matplotlib",            # the evaluation report's plots
        "surface-distance",      # LiTS surface metrics (DeepMind's library)
        "omegaconf>=2.4,<2.5",   # --config / --set over the settings dataclasses
        "pydicom>=3.0",          # DICOM series in (preprocessing/dicom_series.py)
        "highdicom>=0.28",       # DICOM SEG out (inference/dicom_seg.py)
    ],
    extras_require={
        "s3": ["tensorflow-io==0.37.1", "boto3"],   # s3:// for tf.io.gfile and Beam
        "dask": ["dask[distributed]"],               # Beam's DaskRunner
    },
    entry_points={"console_scripts": [
        "unet3plus-synth=preprocessing.synthetic_ct:main",
    ]},
)
