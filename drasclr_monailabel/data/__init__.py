"""Sample data (real CT from package registries), the thorax phantom and the synthetic emphysema cohort."""
