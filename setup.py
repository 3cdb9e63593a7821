"""ddvlm_ros (ament_python) + ddvlm_core + training, installable with pip or colcon."""
from glob import glob

from setuptools import find_packages, setup

package_name = "ddvlm_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["ddvlm_core", "ddvlm_core.*", "ddvlm_ros", "ddvlm_ros.*",
                                    "training", "training.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        ("share/" + package_name + "/msg", glob("msg/*.msg")),
        ("share/" + package_name + "/checkpoints/default", glob("checkpoints/default/*")),  # the embedded default
    ],
    install_requires=["setuptools"],
    # colcon test runs pytest only for a package that names it here (else unittest, which finds no test)
    extras_require={"test": ["pytest"]},
    zip_safe=False,
    maintainer="ddvlm developers",
    maintainer_email="ddvlm@example.org",
    description="DDVLM emotion recognition in conversation for ROS 2 (text + VLM captions, residual fusion, WOQ INT8)",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "ddvlm-predict = ddvlm_core.cli:main",
            "ddvlm-emotion = ddvlm_ros.emotion_node:main",
            "emotion_node = ddvlm_ros.emotion_node:main",
            "ddvlm-emotion-echo = ddvlm_ros.echo:main",
        ],
    },
)
