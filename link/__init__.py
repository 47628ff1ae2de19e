"""The wire format between robot and station, and what both ends share to speak it.

``records`` (plant, row and heartbeat records, their JSON form and ids), ``protocol``
(the serial frame format), ``mqtt`` (topics, payloads, their signatures), ``serial_port``
(ports and the thread that owns one), ``credentials`` (key and password files),
``sqlite`` (how both ends open their databases), ``stats`` and ``ratelimit``. Both
``leafscout.robot`` and ``leafscout.station`` import from here; neither imports the other.
"""
