"""Task sampling strategies, one small class per file."""

from mtlkit.data.sampling.annealed import Annealed
from mtlkit.data.sampling.base import SamplingStrategy, temperature_probabilities
from mtlkit.data.sampling.proportional import Proportional
from mtlkit.data.sampling.temperature import Temperature
from mtlkit.data.sampling.uniform import Uniform

__all__ = [
    "Annealed",
    "Proportional",
    "SamplingStrategy",
    "Temperature",
    "Uniform",
    "temperature_probabilities",
]
