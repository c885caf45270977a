"""The pure decision core: snapshot in, plan out, time passed in. No I/O here."""
