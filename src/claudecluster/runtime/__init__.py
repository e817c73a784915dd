"""The imperative shell: processes, connections and task groups live here."""
