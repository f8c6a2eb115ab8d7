from setuptools import setup

# metadata lives in setup.cfg; trainers/ and planners/ ship inside the package (nnunetv2_rehrseg.trainers,
# nnunetv2_rehrseg.planners), so nnunetv2_rehrseg is the only top-level import name
setup()
