from pathlib import Path

from setuptools import find_packages, setup

requirements = [
    line.strip() for line in Path(__file__).with_name("requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="regionblip-lavis",
    version="0.1.0",
    description="A research framework for region-level multimodal language models (RegionBLIP and successors)",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["lavis", "lavis.*"]),
    package_data={"lavis": ["configs/**/*.yaml"]},
    include_package_data=True,
    install_requires=requirements,
    extras_require={"test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6"]},
)
