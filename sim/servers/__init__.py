"""The plant on the wire: Modbus TCP servers for the batteries, HomeWizard HTTP for the meters."""
