"""Transport between hosts: path-MTU probing (`probe`) and what apply/status do with
the measurements (`pmtu`)."""
