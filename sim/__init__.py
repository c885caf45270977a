"""MMBC simulator: Venus E batteries and a HomeWizard P1 meter to replay recorded days against."""
