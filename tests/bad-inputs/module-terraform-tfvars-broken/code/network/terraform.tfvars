zone = "c"
zone2 = 
